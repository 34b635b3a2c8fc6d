//! `--device` errors: asking for CUDA from a build without it (or a malformed device) fails at once
//! with a message naming the flag and what to do, exits 1 without a panic, and writes nothing.

use std::process::Command;

fn trainer(device: &str, out: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_crt-trainer"))
        .args(["--events", "jsonl", "--device", device, "train", "--arch", "lenet", "--dataset", "mnist"])
        .args(["--data-dir", "/nonexistent-crt-data", "--out"])
        .arg(out)
        .output()
        .expect("run crt-trainer")
}

fn refused(device: &str, expect: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let o = trainer(device, &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "--device {device}: {stderr}");
    assert!(stderr.contains(&format!("--device {device}")) && stderr.contains(expect), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists(), "nothing is written for a refused device");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_on_a_cpu_build_is_refused_with_the_rebuild_hint() {
    refused("cuda", "built without CUDA");
    refused("cuda:1", "built without CUDA");
}

#[test]
fn malformed_devices_are_refused() {
    refused("cuda:x", "expected cuda:N");
    refused("tpu", "expected cpu, cuda, cuda:N or auto");
}
