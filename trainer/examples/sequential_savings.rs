//! Samples saved by sequential certification, measured against fixed-N CERTIFY on the same images
//! (issue 18; docs/certification.md, "Sequential certification"; results in docs/results.md):
//!
//! ```sh
//! crt-trainer train --dataset mnist --arch lenet --method gaussian --sigma 0.25 --epochs 90 --out runs/lenet-g025
//! cargo run -p crt-trainer --example sequential_savings -- --model runs/lenet-g025 --images 500 --out runs/savings
//! ```
//!
//! Runs fixed N once (it serves every R), the target-radius mode at each R and the adaptive mode,
//! each into its own directory under `--out` (rerunning resumes: finished runs cost nothing), then
//! prints mean samples per image, the ratio to N, paired agreement at each R and the adaptive
//! mode's ACR and certified accuracies beside fixed N's, as a markdown table.

use std::path::PathBuf;

use anyhow::Context as _;
use candle_core::Device;
use clap::Parser;
use crt_trainer::certify::clopper_pearson::required_probability;
use crt_trainer::certify::{certify_images, select, LabeledImage, Sink, Smoothing};
use crt_trainer::config::CertifyMode;
use crt_trainer::data;
use crt_trainer::events::Certificate;
use crt_trainer::models::Model;
use crt_trainer::report::Reporter;
use crt_trainer::stop::StopFlag;

#[derive(Parser)]
struct Args {
    /// A trainer output directory (its model.json gives the dataset and sigma).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value = "target/crt-data")]
    data_dir: PathBuf,
    /// Test images, evenly spaced over the split.
    #[arg(long, default_value_t = 500)]
    images: usize,
    #[arg(long, default_value_t = 100_000)]
    n: usize,
    #[arg(long, default_value_t = 0.001)]
    alpha: f64,
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,0.75")]
    radii: Vec<f64>,
    /// The adaptive mode's tolerance.
    #[arg(long, default_value_t = 0.01)]
    tolerance: f64,
    #[arg(long, default_value_t = 250)]
    batch: usize,
    /// Run the adaptive mode on the first K of the images only (it costs about half of fixed N);
    /// its ACR and accuracies are then compared with fixed N's on the same K images.
    #[arg(long)]
    adaptive_images: Option<usize>,
    #[arg(long)]
    out: PathBuf,
}

struct ModeRun {
    name: String,
    certs: Vec<Certificate>,
    /// Seconds of certification (sum over images).
    seconds: f64,
}

impl ModeRun {
    fn mean_samples(&self, n: usize) -> f64 {
        self.certs.iter().map(|c| c.samples.unwrap_or(n as u64) as f64).sum::<f64>() / self.certs.len() as f64
    }
}

fn certified_at(c: &Certificate, r: f64) -> bool {
    c.correct && c.radius.unwrap_or(0.0) >= r
}

fn acc_at(certs: &[Certificate], r: f64) -> f64 {
    certs.iter().filter(|c| certified_at(c, r)).count() as f64 / certs.len() as f64
}

fn acr(certs: &[Certificate]) -> f64 {
    certs.iter().filter(|c| c.correct).map(|c| c.radius.unwrap_or(0.0)).sum::<f64>() / certs.len() as f64
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let device = Device::Cpu;
    let (model, meta) = Model::load_dir(&args.model, &device).with_context(|| args.model.display().to_string())?;
    let sigma = meta.sigma.context("model.json records no training sigma")?;
    let split = data::load(model.dataset, &args.data_dir, false)?;
    let skip = (split.len() / args.images).max(1);
    let indices = select(split.len(), skip, Some(args.images));
    let images: Vec<LabeledImage> = indices
        .iter()
        .map(|&i| LabeledImage { idx: i as u64, label: i64::from(split.label(i)), pixels: split.image(i) })
        .collect();
    let (reporter, stop) = (Reporter::quiet(), StopFlag::default());
    let base = Smoothing {
        sigma,
        n0: 100,
        n: args.n,
        alpha: args.alpha,
        batch: args.batch,
        seed: 0,
        mode: CertifyMode::Fixed,
    };
    let run_on = |name: String, mode: CertifyMode, images: &[LabeledImage]| -> anyhow::Result<ModeRun> {
        let out = args.out.join(&name);
        std::fs::create_dir_all(&out)?;
        let sink = Sink { out_dir: &out, reporter: &reporter, stop: &stop, resume: true };
        let started = std::time::Instant::now();
        let result = certify_images(&model, images, &Smoothing { mode, ..base.clone() }, sink)?;
        let seconds = result.certificates.iter().map(|c| c.time).sum::<f64>();
        eprintln!(
            "{name}: {} images, {seconds:.1} s of certification ({:.1} s now)",
            result.certificates.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(ModeRun { name, certs: result.certificates, seconds })
    };

    let run = |name: String, mode: CertifyMode| run_on(name, mode, &images);
    let fixed = run("fixed".into(), CertifyMode::Fixed)?;
    let targets: Vec<(f64, ModeRun)> = args
        .radii
        .iter()
        .map(|&r| Ok((r, run(format!("target-{r}"), CertifyMode::TargetRadius { radius: r })?)))
        .collect::<anyhow::Result<_>>()?;
    let adaptive_k = args.adaptive_images.unwrap_or(images.len()).min(images.len());
    let adaptive = run_on(
        format!("adaptive-{}", args.tolerance),
        CertifyMode::Adaptive { tolerance: args.tolerance },
        &images[..adaptive_k],
    )?;

    let n = args.n;
    println!(
        "\n{} images, sigma {sigma}, N = {n}, alpha = {}, n0 = 100 (not counted below)\n",
        images.len(),
        args.alpha
    );
    println!("| run | mean samples / image | N / mean | certification time | certified acc at R | fixed-N at R | disagreements |");
    println!("|---|---|---|---|---|---|---|");
    println!("| fixed N | {n} | 1.0× | {:.0} s | | | |", fixed.seconds);
    for (r, t) in &targets {
        let mean = t.mean_samples(n);
        let disagree: Vec<(u64, f64, bool)> = t
            .certs
            .iter()
            .zip(&fixed.certs)
            .filter(|(a, b)| certified_at(a, *r) != certified_at(b, *r))
            .map(|(a, b)| (a.idx, b.p_lower.unwrap_or(0.0), certified_at(a, *r)))
            .collect();
        println!(
            "| target R = {r} | {mean:.0} | {:.1}× | {:.0} s | {:.3} | {:.3} | {} ({:.1} %) |",
            n as f64 / mean,
            t.seconds,
            acc_at(&t.certs, *r),
            acc_at(&fixed.certs, *r),
            disagree.len(),
            100.0 * disagree.len() as f64 / images.len() as f64
        );
        let p0 = required_probability(sigma, *r);
        for (idx, p_lower, by_target) in disagree {
            eprintln!(
                "  R = {r}: image {idx} certified by {} only; fixed-N p_lower {p_lower:.5}, Phi(R/sigma) = {p0:.5}, difference {:+.5}",
                if by_target { "the target mode" } else { "fixed N" },
                p_lower - p0
            );
        }
    }
    // Images whose every estimation sample voted for the true class: their fixed-N radius is the
    // most N samples can give, and any stop before N gives a smaller one.
    let unanimous = fixed.certs.iter().filter(|c| c.correct && c.count_a == Some(n as u64)).count();
    eprintln!(
        "fixed N: {unanimous} of {} images unanimous ({:.1} %)",
        fixed.certs.len(),
        100.0 * unanimous as f64 / fixed.certs.len() as f64
    );
    let fixed_k = ModeRun {
        name: format!("fixed N (first {adaptive_k} images)"),
        certs: fixed.certs[..adaptive_k].to_vec(),
        seconds: fixed.certs[..adaptive_k].iter().map(|c| c.time).sum(),
    };
    let mean = adaptive.mean_samples(n);
    println!(
        "| {} ({adaptive_k} images) | {mean:.0} | {:.1}× | {:.0} s (fixed N on them: {:.0} s) | | | |",
        adaptive.name,
        n as f64 / mean,
        adaptive.seconds,
        fixed_k.seconds
    );
    println!(
        "\n| | ACR | {} |",
        args.radii.iter().map(|r| format!("certified acc at {r}")).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|---|{}", "---|".repeat(args.radii.len()));
    for m in [&fixed_k, &adaptive] {
        println!(
            "| {} | {:.4} | {} |",
            m.name,
            acr(&m.certs),
            args.radii.iter().map(|r| format!("{:.3}", acc_at(&m.certs, *r))).collect::<Vec<_>>().join(" | ")
        );
    }
    let rel = (acr(&adaptive.certs) - acr(&fixed_k.certs)) / acr(&fixed_k.certs).max(1e-12);
    println!("\nadaptive ACR relative to fixed N: {:+.2} %", 100.0 * rel);
    Ok(())
}
