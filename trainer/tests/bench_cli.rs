//! `crt-trainer bench --kernels`: each choice runs and names itself in its JSON row (`im2col` is
//! the A/B switch against the Winograd convolutions, which `crt` uses), and a value that is not
//! one of them is refused with the list.

use std::process::{Command, Output};

fn bench(kernels: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crt-trainer"))
        .args(["bench", "--no-torch", "--models", "resnet20", "--modes", "certify", "--runs", "1"])
        .args(["--certify-batch", "2", "--matmul-size", "32", "--kernels", kernels])
        .output()
        .expect("run crt-trainer bench")
}

#[test]
fn every_kernel_choice_runs_and_is_named_in_its_row() {
    for kernels in ["crt", "im2col", "candle"] {
        let o = bench(kernels);
        let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "--kernels {kernels}: {stderr}");
        let row: serde_json::Value = stdout
            .lines()
            .find(|l| l.starts_with("{\"impl\""))
            .map(|l| serde_json::from_str(l).expect("a JSON row"))
            .unwrap_or_else(|| panic!("--kernels {kernels}: no row in {stdout}"));
        assert_eq!(row["kernels"], kernels, "{row}");
        assert_eq!(row["model"], "resnet20", "{row}");
        assert!(row["items_per_s"].as_f64().is_some_and(|r| r > 0.0), "{row}");
    }
}

#[test]
fn an_unknown_kernel_choice_is_refused_with_the_list() {
    let o = bench("winograd");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--kernels") && stderr.contains("im2col"), "{stderr}");
}
