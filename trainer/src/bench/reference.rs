//! The PyTorch side of the comparison: runs `torch_reference.py` (the project's own
//! `scripts/torch_vit_reference.py` for `vit`) with the same models, batch sizes, threads and run
//! count, and reads its JSON lines.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use super::Case;
use crate::config::Arch;

/// Where the script lives relative to the repository: `<repo>/../shared/bench/`.
const SCRIPT_FROM_REPO: &str = "../shared/bench/torch_reference.py";
/// The ViT twin's timing script, in the repository (the shared script has no ViT).
const VIT_SCRIPT_FROM_REPO: &str = "scripts/torch_vit_reference.py";

/// One line of the script's output (fields we use; the rest are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct TorchRow {
    pub torch: String,
    pub model: String,
    pub mode: String,
    pub batch: usize,
    pub threads: usize,
    pub median_s: f64,
    pub items_per_s: f64,
}

/// How to run the script.
#[derive(Debug, Clone)]
pub struct Reference {
    pub python: PathBuf,
    pub script: PathBuf,
    /// The script that times `vit` (same CLI and output).
    pub vit_script: PathBuf,
    /// The script's `--device`: cpu or cuda, matching ours.
    pub device: String,
}

/// The repository root this binary was built from (the workspace above the trainer crate).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The script named by `--torch-script`, else the first of `<cwd>/../shared/bench/…` and
/// `<repo>/../shared/bench/…` that exists. `None` when there is none.
pub fn find_script(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let cwd = std::env::current_dir().ok()?;
    [cwd.join(SCRIPT_FROM_REPO), repo_root().join(SCRIPT_FROM_REPO)].into_iter().find(|p| p.is_file())
}

/// `scripts/torch_vit_reference.py` under the current directory if it is there, else under the
/// repository this binary was built from.
pub fn vit_script() -> PathBuf {
    let here = Path::new(VIT_SCRIPT_FROM_REPO);
    if here.is_file() {
        here.to_path_buf()
    } else {
        repo_root().join(VIT_SCRIPT_FROM_REPO)
    }
}

/// The Python given by `--torch`, else the repository's `.venv-bench` (made by `scripts/bench.sh`)
/// when it exists, else `python3` from PATH.
pub fn default_python(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    let venv = repo_root().join(".venv-bench/bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

impl Reference {
    /// Times one case in PyTorch. The error says what failed (missing interpreter, no torch, bad output).
    pub fn measure(&self, case: &Case, threads: usize, runs: usize) -> anyhow::Result<TorchRow> {
        let model = case.arch.as_str();
        let script = if case.arch == Arch::Vit { &self.vit_script } else { &self.script };
        let output = Command::new(&self.python)
            .arg(script)
            .args(["--models", model, "--modes", case.mode.as_str()])
            .args(["--threads", &threads.to_string(), "--runs", &runs.to_string()])
            .args(["--train-batch", &format!("{model}={}", case.batch)])
            .args(["--certify-batch", &case.batch.to_string()])
            .args(["--device", &self.device])
            .output()
            .map_err(|e| anyhow::anyhow!("--torch {}: cannot run: {e}", self.python.display()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no error output");
            anyhow::bail!("{} {} failed ({}): {last}", self.python.display(), script.display(), output.status);
        }
        parse_row(&String::from_utf8_lossy(&output.stdout), case)
    }
}

/// The script's line for this case.
pub fn parse_row(stdout: &str, case: &Case) -> anyhow::Result<TorchRow> {
    for line in stdout.lines().filter(|l| l.trim_start().starts_with('{')) {
        let row: TorchRow = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("torch_reference.py printed an unexpected line ({e}): {line}"))?;
        if row.model == case.arch.as_str() && row.mode == case.mode.as_str() {
            return Ok(row);
        }
    }
    anyhow::bail!("torch_reference.py printed no result for {} {}", case.arch.as_str(), case.mode.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Mode;

    const LINE: &str = r#"{"impl": "pytorch", "torch": "2.15.0", "device": "cpu", "model": "lenet", "mode": "train", "batch": 256, "threads": 2, "median_s": 0.05, "items_per_s": 5120.0, "runs": 10}"#;

    #[test]
    fn picks_the_line_of_the_case() {
        let case = Case { arch: Arch::Lenet, mode: Mode::Train, batch: 256 };
        let row = parse_row(&format!("warning: something\n{LINE}\n"), &case).unwrap();
        assert_eq!((row.batch, row.threads, row.items_per_s), (256, 2, 5120.0));
        let other = Case { mode: Mode::Certify, ..case };
        assert!(parse_row(LINE, &other).unwrap_err().to_string().contains("no result for lenet certify"));
    }

    #[test]
    fn a_missing_interpreter_is_named() {
        let reference = Reference {
            python: "/nonexistent/python".into(),
            script: "x.py".into(),
            vit_script: vit_script(),
            device: "cpu".into(),
        };
        let case = Case { arch: Arch::Lenet, mode: Mode::Train, batch: 2 };
        let err = reference.measure(&case, 1, 1).unwrap_err().to_string();
        assert!(err.contains("--torch /nonexistent/python"), "{err}");
    }
}
