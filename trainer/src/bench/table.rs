//! The benchmark's results: one JSON line per row (for scripts) and a table (for people).

use std::fmt::Write;

use serde::Serialize;

use super::Mode;

/// One measured case, ours beside PyTorch's.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    #[serde(rename = "impl")]
    pub implementation: &'static str,
    /// crt (the crate's kernels), im2col (them with im2col + gemm for every convolution) or candle
    /// (candle's own ops).
    pub kernels: &'static str,
    pub model: String,
    pub mode: Mode,
    pub batch: usize,
    pub threads: usize,
    pub runs: usize,
    /// Rounds of ours and PyTorch back to back; the rates and the ratio are medians over them.
    pub rounds: usize,
    pub median_s: f64,
    pub items_per_s: f64,
    /// PyTorch's version, rate and ours / PyTorch; absent when PyTorch was not run.
    pub torch: Option<String>,
    pub torch_items_per_s: Option<f64>,
    pub ratio: Option<f64>,
    /// The lowest and highest ours / PyTorch over the rounds.
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
    /// Why PyTorch's numbers are missing.
    pub note: Option<String>,
}

/// The matmul ceiling and LeNet certification's share of it.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub kind: &'static str,
    pub matmul_n: usize,
    pub matmul_gflops: f64,
    pub lenet_forward_mflop_per_sample: f64,
    pub lenet_certify_gflops: Option<f64>,
    pub lenet_certify_pct_of_matmul: Option<f64>,
}

impl Ceiling {
    pub fn new(matmul_n: usize, matmul_gflops: f64, lenet_flops: u64, lenet_certify_items_per_s: Option<f64>) -> Self {
        let lenet_certify_gflops = lenet_certify_items_per_s.map(|r| r * lenet_flops as f64 / 1e9);
        Ceiling {
            kind: "matmul",
            matmul_n,
            matmul_gflops,
            lenet_forward_mflop_per_sample: lenet_flops as f64 / 1e6,
            lenet_certify_gflops,
            lenet_certify_pct_of_matmul: lenet_certify_gflops.map(|g| 100.0 * g / matmul_gflops),
        }
    }
}

/// A fixed-width table of the rows, the notes, and the ceiling.
pub fn render(rows: &[Row], ceiling: Option<&Ceiling>) -> String {
    let mut out = String::new();
    let header = ["model", "mode", "batch", "threads", "kernels", "ours items/s", "PyTorch items/s", "ours/PyTorch"];
    let [h0, h1, h2, h3, h4, h5, h6, h7] = header;
    let _ = writeln!(out, "{h0:<10} {h1:<8} {h2:>6} {h3:>7} {h4:>7} {h5:>13} {h6:>16}   {h7}");
    for r in rows {
        let torch = r.torch_items_per_s.map_or("-".to_string(), |v| format!("{v:.1}"));
        let ratio = match (r.ratio, r.ratio_min, r.ratio_max) {
            (Some(v), Some(lo), Some(hi)) if r.rounds > 1 => {
                format!("{v:.2} ({lo:.2}-{hi:.2} over {} rounds)", r.rounds)
            }
            (Some(v), ..) => format!("{v:.2}"),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<10} {:<8} {:>6} {:>7} {:>7} {:>13.1} {:>16}   {}",
            r.model,
            r.mode.as_str(),
            r.batch,
            r.threads,
            r.kernels,
            r.items_per_s,
            torch,
            ratio
        );
    }
    // A note shared by every row (PyTorch skipped) is printed once.
    let notes: Vec<&str> = rows.iter().filter_map(|r| r.note.as_deref()).collect();
    if !notes.is_empty() && notes.len() == rows.len() && notes.iter().all(|n| *n == notes[0]) {
        let _ = writeln!(out, "note: {}", notes[0]);
    } else {
        for r in rows.iter().filter(|r| r.note.is_some()) {
            let _ = writeln!(out, "note ({} {}): {}", r.model, r.mode.as_str(), r.note.as_deref().unwrap_or_default());
        }
    }
    if let Some(c) = ceiling {
        let _ = write!(out, "candle fp32 matmul ({0}x{0}): {1:.1} GFLOP/s", c.matmul_n, c.matmul_gflops);
        if let (Some(g), Some(p)) = (c.lenet_certify_gflops, c.lenet_certify_pct_of_matmul) {
            let mflop = c.lenet_forward_mflop_per_sample;
            let _ =
                write!(out, "; LeNet certify: {g:.1} GFLOP/s effective ({mflop:.3} MFLOP/sample) = {p:.1}% of matmul");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ratio: Option<f64>) -> Row {
        Row {
            implementation: "crt-trainer",
            kernels: "crt",
            model: "lenet".into(),
            mode: Mode::Certify,
            batch: 1000,
            threads: 2,
            runs: 10,
            rounds: 1,
            median_s: 0.5,
            items_per_s: 2000.0,
            torch: ratio.map(|_| "2.15.0".into()),
            torch_items_per_s: ratio.map(|r| 2000.0 / r),
            ratio,
            ratio_min: ratio.map(|r| r * 0.9),
            ratio_max: ratio.map(|r| r * 1.2),
            note: ratio.is_none().then(|| "no torch".into()),
        }
    }

    #[test]
    fn table_shows_rates_ratio_notes_and_ceiling() {
        let ceiling = Ceiling::new(1024, 100.0, 4_586_000, Some(2000.0));
        assert!((ceiling.lenet_certify_gflops.unwrap() - 9.172).abs() < 1e-9);
        assert!((ceiling.lenet_certify_pct_of_matmul.unwrap() - 9.172).abs() < 1e-9);
        let text = render(&[row(Some(0.5)), row(None)], Some(&ceiling));
        assert!(text.contains("4000.0") && text.contains("0.50"), "{text}");
        assert!(text.contains("note (lenet certify): no torch"), "{text}");
        assert!(text.contains("= 9.2% of matmul"), "{text}");
        assert!(!text.contains("rounds"), "one round has no range: {text}");
        let three = render(&[Row { rounds: 3, ..row(Some(0.5)) }], None);
        assert!(three.contains("0.50 (0.45-0.60 over 3 rounds)"), "{three}");
        let same = render(&[row(None), row(None)], None);
        assert_eq!(same.matches("note").count(), 1, "{same}");
    }

    #[test]
    fn json_line_has_the_scripts_field_names() {
        let json = serde_json::to_value(row(Some(2.0))).unwrap();
        assert_eq!(json["impl"], "crt-trainer");
        assert_eq!(json["mode"], "certify");
        assert_eq!(json["ratio"], 2.0);
    }
}
