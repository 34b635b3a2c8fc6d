//! `crt-trainer bench`: our training-step and certification rates beside PyTorch's (see `crate::bench`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use candle_core::Device;

use crate::bench::reference::{self, Reference, TorchRow};
use crate::bench::table::{self, Ceiling, Row};
use crate::bench::{flops, median, workload, Case, Mode};
use crate::config::Arch;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Models, comma-separated: lenet, resnet20, resnet56, resnet110, vit.
    #[arg(long, default_value = "lenet,resnet20")]
    pub models: String,
    /// Workloads, comma-separated: train (one SGD step), certify (one noisy sampling batch).
    #[arg(long, default_value = "train,certify")]
    pub modes: String,
    /// Timed runs per row (after 2 warm-up runs); the median is reported.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Rounds per row: ours and PyTorch back to back, the order alternating; reports the median of
    /// each side and of the per-round ratios (steadier on machines whose speed drifts); a row whose
    /// own rate moved more than 20% between rounds gets a note saying so.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Training batch per model, MODEL=N pairs; models not named use 128.
    #[arg(long, default_value = "lenet=256,resnet20=128")]
    pub train_batch: String,
    /// Noisy copies per certification batch.
    #[arg(long, default_value_t = 1000)]
    pub certify_batch: usize,
    /// Python interpreter with torch installed (default: the repository's .venv-bench, else python3).
    #[arg(long, value_name = "PYTHON")]
    pub torch: Option<PathBuf>,
    /// The PyTorch reference script (default: ../shared/bench/torch_reference.py from the repository).
    #[arg(long, value_name = "FILE")]
    pub torch_script: Option<PathBuf>,
    /// Measure only our side.
    #[arg(long)]
    pub no_torch: bool,
    /// Whose CPU code runs the layers: crt (the crate's kernels, Winograd's minimal filtering for
    /// 3x3 stride-1 convolutions of 16 channels or more), im2col (the crate's kernels with im2col +
    /// gemm for every convolution) or candle (candle's own ops), for A/B runs.
    #[arg(long, default_value = "crt", value_parser = ["crt", "im2col", "candle"])]
    pub kernels: String,
    /// Side of the square matrices for the matmul ceiling.
    #[arg(long, default_value_t = 1024)]
    pub matmul_size: usize,
}

impl BenchArgs {
    /// Every (model, mode) row, in the order given, with its batch size.
    pub fn cases(&self) -> anyhow::Result<Vec<Case>> {
        let train_batch = parse_batches(&self.train_batch)?;
        if self.certify_batch == 0 || self.runs == 0 || self.rounds == 0 {
            bail!("--certify-batch, --runs and --rounds must be at least 1");
        }
        let mut cases = Vec::new();
        for model in self.models.split(',').filter(|s| !s.is_empty()) {
            let arch: Arch = model.parse().map_err(|e| anyhow::anyhow!("--models: {e}"))?;
            if matches!(arch, Arch::Linear | Arch::Mlp) {
                bail!(
                    "--models: {model} has no PyTorch reference; expected lenet, resnet20, resnet56, resnet110 or vit"
                );
            }
            for mode in self.modes.split(',').filter(|s| !s.is_empty()) {
                let mode: Mode = mode.parse()?;
                let batch = match mode {
                    Mode::Train => train_batch.get(model).copied().unwrap_or(128),
                    Mode::Certify => self.certify_batch,
                };
                cases.push(Case { arch, mode, batch });
            }
        }
        if cases.is_empty() {
            bail!("--models and --modes name nothing to measure");
        }
        Ok(cases)
    }
}

/// `lenet=256,resnet20=128` as a map; the error names the flag and the bad pair.
fn parse_batches(text: &str) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut map = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let parsed = pair.split_once('=').and_then(|(k, v)| Some((k.to_string(), v.parse::<usize>().ok()?)));
        match parsed {
            Some((k, v)) if v > 0 => map.insert(k, v),
            _ => bail!("--train-batch: expected MODEL=N pairs with N >= 1, like lenet=256, got '{pair}'"),
        };
    }
    Ok(map)
}

/// The PyTorch side, or the reason it is skipped.
fn reference(args: &BenchArgs, device: &Device) -> Result<Reference, String> {
    if args.no_torch {
        return Err("PyTorch skipped (--no-torch)".into());
    }
    let vit_script = reference::vit_script();
    // vit is timed by the repository's own script: the shared one is needed only for other models.
    let only_vit = args.cases().is_ok_and(|cases| cases.iter().all(|c| c.arch == Arch::Vit));
    let script = match reference::find_script(args.torch_script.as_deref()) {
        Some(script) => script,
        None if only_vit => vit_script.clone(),
        None => {
            return Err("PyTorch skipped: ../shared/bench/torch_reference.py not found next to the repository \
                        (pass --torch-script FILE)"
                .to_string())
        }
    };
    let device = if device.is_cuda() { "cuda" } else { "cpu" }.to_string();
    Ok(Reference { python: reference::default_python(args.torch.as_deref()), script, vit_script, device })
}

pub fn execute(args: BenchArgs, device: &Device, threads: usize) -> anyhow::Result<()> {
    let cases = args.cases()?;
    crate::kernels::set_enabled(args.kernels != "candle");
    crate::kernels::set_winograd(args.kernels != "im2col");
    let reference = reference(&args, device);
    let mut rows = Vec::new();
    for case in &cases {
        let (model, mode) = (case.arch.as_str(), case.mode.as_str());
        let m =
            measure_case(case, device, &reference, threads, &args).with_context(|| format!("bench {model} {mode}"))?;
        let (median_s, torch) = (m.median_s, m.torch);
        let items_per_s = case.batch as f64 / median_s;
        let row = Row {
            implementation: "crt-trainer",
            kernels: match args.kernels.as_str() {
                "crt" => "crt",
                "im2col" => "im2col",
                _ => "candle",
            },
            model: model.to_string(),
            mode: case.mode,
            batch: case.batch,
            threads,
            runs: args.runs,
            rounds: args.rounds,
            median_s,
            items_per_s,
            torch: torch.as_ref().ok().map(|t| t.version.clone()),
            torch_items_per_s: torch.as_ref().ok().map(|t| t.items_per_s),
            ratio: torch.as_ref().ok().map(|t| t.ratio),
            ratio_min: torch.as_ref().ok().map(|t| t.ratio_range.0),
            ratio_max: torch.as_ref().ok().map(|t| t.ratio_range.1),
            note: row_note(torch.err(), m.unsteady),
        };
        println!("{}", serde_json::to_string(&row)?);
        rows.push(row);
    }
    let ceiling = ceiling(&args, &rows, device)?;
    println!("{}", serde_json::to_string(&ceiling)?);
    print!("\n{}", table::render(&rows, Some(&ceiling)));
    Ok(())
}

/// One row's measurements: our median seconds, and PyTorch's side or why it is missing.
struct Measured {
    median_s: f64,
    torch: Result<TorchSide, String>,
    /// Set when our own rate moved by more than [`UNSTEADY`] between rounds.
    unsteady: Option<String>,
}

/// Highest over lowest of our per-round rates above which a row is flagged: our work is the same
/// every round, so a larger spread is the machine's speed moving under the measurement.
const UNSTEADY: f64 = 1.2;

/// A note for a row whose rounds ran at visibly different machine speeds (`ours_s`: our median
/// seconds per round), naming the spread, so that a reader compares its ratio with care.
fn unsteady_note(batch: usize, ours_s: &[f64]) -> Option<String> {
    let rates: Vec<f64> = ours_s.iter().map(|s| batch as f64 / s).collect();
    let (lowest, highest) = range(&rates);
    (rates.len() >= 2 && highest > UNSTEADY * lowest).then(|| {
        format!(
            "unsteady machine: our rate moved {lowest:.1}-{highest:.1} items/s ({:.0}% apart) over the rounds with the same work; compare this row with care",
            100.0 * (highest / lowest - 1.0)
        )
    })
}

/// The lowest and highest of the values.
fn range(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// A row's note: why PyTorch's side is missing and whether the machine was unsteady, either or both.
fn row_note(torch_missing: Option<String>, unsteady: Option<String>) -> Option<String> {
    match (torch_missing, unsteady) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

struct TorchSide {
    version: String,
    items_per_s: f64,
    /// Median over the rounds of ours / PyTorch.
    ratio: f64,
    /// The lowest and highest per-round ratio: how far the machine's drift moved it.
    ratio_range: (f64, f64),
}

/// PyTorch's side of a row from each round's pair: our median seconds and PyTorch's row.
fn torch_side(batch: usize, rounds: &[(f64, &TorchRow)]) -> TorchSide {
    let mut ratios: Vec<f64> = rounds.iter().map(|(ours_s, t)| batch as f64 / ours_s / t.items_per_s).collect();
    let mut torch_rates: Vec<f64> = rounds.iter().map(|(_, t)| t.items_per_s).collect();
    TorchSide {
        version: rounds.first().map(|(_, t)| t.torch.clone()).unwrap_or_default(),
        items_per_s: median(&mut torch_rates),
        ratio_range: range(&ratios),
        ratio: median(&mut ratios),
    }
}

/// Runs one case `--rounds` times, ours and PyTorch back to back with the order alternating, so
/// that a machine whose speed drifts (a shared VM) favours neither side.
fn measure_case(
    case: &Case,
    device: &Device,
    reference: &Result<Reference, String>,
    threads: usize,
    args: &BenchArgs,
) -> anyhow::Result<Measured> {
    let (model, mode) = (case.arch.as_str(), case.mode.as_str());
    let ours = || -> anyhow::Result<f64> {
        eprintln!("bench: {model} {mode} (batch {}): ours...", case.batch);
        workload::measure(case, device, args.runs)
    };
    let torch = || match reference {
        Ok(r) => {
            eprintln!("bench: {model} {mode} (batch {}): PyTorch...", case.batch);
            r.measure(case, threads, args.runs).map_err(|e| format!("{e:#}"))
        }
        Err(note) => Err(note.clone()),
    };
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let pair = if round % 2 == 0 {
            let o = ours()?;
            (o, torch())
        } else {
            let t = torch();
            (ours()?, t)
        };
        rounds.push(pair);
    }
    let mut ours_s: Vec<f64> = rounds.iter().map(|r| r.0).collect();
    let unsteady = unsteady_note(case.batch, &ours_s);
    let median_s = median(&mut ours_s);
    let torch = match rounds.iter().find_map(|r| r.1.as_ref().err()) {
        Some(note) => Err(note.clone()),
        None => {
            let pairs: Vec<(f64, &TorchRow)> = rounds.iter().filter_map(|r| Some((r.0, r.1.as_ref().ok()?))).collect();
            Ok(torch_side(case.batch, &pairs))
        }
    };
    Ok(Measured { median_s, torch, unsteady })
}

/// The matmul rate, and LeNet certification's effective rate as a share of it.
fn ceiling(args: &BenchArgs, rows: &[Row], device: &Device) -> anyhow::Result<Ceiling> {
    eprintln!("bench: matmul {0}x{0}...", args.matmul_size);
    let gflops = flops::matmul_gflops(args.matmul_size, args.runs, device)?;
    let lenet = flops::forward_cost((1, 28, 28), &flops::lenet_layers(10));
    let certify = rows.iter().find(|r| r.model == "lenet" && r.mode == Mode::Certify).map(|r| r.items_per_s);
    Ok(Ceiling::new(args.matmul_size, gflops, lenet.flops, certify))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn args(extra: &[&str]) -> BenchArgs {
        Wrapper::parse_from([&["bench"], extra].concat()).args
    }

    #[test]
    fn default_cases_match_the_pytorch_script() {
        let cases = args(&[]).cases().unwrap();
        let got: Vec<(&str, &str, usize)> = cases.iter().map(|c| (c.arch.as_str(), c.mode.as_str(), c.batch)).collect();
        assert_eq!(
            got,
            [
                ("lenet", "train", 256),
                ("lenet", "certify", 1000),
                ("resnet20", "train", 128),
                ("resnet20", "certify", 1000)
            ]
        );
    }

    #[test]
    fn rows_whose_rounds_ran_at_different_speeds_are_flagged() {
        // 128 items in 0.2 s and 0.25 s: 640 and 512 items/s, 25% apart.
        let note = unsteady_note(128, &[0.2, 0.25, 0.21]).expect("a 25% spread is flagged");
        assert!(note.contains("512.0-640.0 items/s") && note.contains("25% apart"), "{note}");
        assert_eq!(unsteady_note(128, &[0.2, 0.23, 0.21]), None, "a 15% spread is not");
        assert_eq!(unsteady_note(128, &[0.2]), None, "one round has no spread");
    }

    #[test]
    fn a_rows_note_keeps_both_reasons() {
        let (missing, unsteady) = (Some("no torch".to_string()), Some("unsteady machine: x".to_string()));
        assert_eq!(row_note(missing.clone(), unsteady.clone()).as_deref(), Some("no torch; unsteady machine: x"));
        assert_eq!(row_note(None, unsteady.clone()), unsteady);
        assert_eq!(row_note(missing.clone(), None), missing);
        assert_eq!(row_note(None, None), None);
    }

    #[test]
    fn bad_flags_are_named() {
        let err = |a: &[&str]| args(a).cases().unwrap_err().to_string();
        assert!(err(&["--models", "vgg"]).contains("--models"));
        assert!(err(&["--modes", "eval"]).contains("--modes"));
        assert!(err(&["--train-batch", "lenet=x"]).contains("--train-batch"));
        assert!(err(&["--train-batch", "lenet=0"]).contains("lenet=0"));
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(args(&["--rounds", "0"]).cases().unwrap_err().to_string().contains("--rounds"));
    }

    #[test]
    fn torch_side_takes_medians_and_the_range_of_per_round_ratios() {
        let row = |items_per_s: f64| TorchRow {
            torch: "2.15.0".into(),
            model: "lenet".into(),
            mode: "train".into(),
            batch: 100,
            threads: 2,
            median_s: 100.0 / items_per_s,
            items_per_s,
        };
        let (a, b, c) = (row(100.0), row(200.0), row(50.0));
        // Ours at 1 s per batch of 100 (100 items/s) each round: ratios 1.0, 0.5 and 2.0.
        let side = torch_side(100, &[(1.0, &a), (1.0, &b), (1.0, &c)]);
        assert_eq!((side.items_per_s, side.ratio, side.ratio_range), (100.0, 1.0, (0.5, 2.0)));
        assert_eq!(side.version, "2.15.0");
    }

    #[test]
    fn train_batches_apply_per_model() {
        let cases =
            args(&["--models", "resnet110", "--modes", "train", "--train-batch", "resnet110=64"]).cases().unwrap();
        assert_eq!(cases[0].batch, 64);
    }
}
