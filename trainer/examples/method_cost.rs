//! Step cost of every training method, in one invocation:
//!
//! - `cargo run --release -p crt-trainer --example method_cost -- --arch lenet --batch 64 --steps 20`:
//!   every method at its defaults, relative to Gaussian augmentation;
//! - `... -- --table1 --arch resnet20 --teacher resnet20 --dataset fashion-mnist`: the CRT paper's
//!   Table 1 measured, the robust methods at the reference codes' settings and CRT relative to
//!   standard training (docs/methods.md).

use clap::Parser;
use crt_trainer::config::{Arch, Dataset};
use crt_trainer::methods::cost::{method_costs, reference_settings, table1_costs};

#[derive(Parser)]
struct Args {
    /// Architecture (of the student, with --table1).
    #[arg(long, default_value = "lenet")]
    arch: Arch,
    /// Dataset shape: mnist, fashion-mnist, cifar10.
    #[arg(long, default_value = "mnist")]
    dataset: Dataset,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed steps per method (after one warm-up step).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Noise level of every method.
    #[arg(long, default_value_t = 0.25)]
    sigma: f64,
    /// The CRT paper's Table 1: reference settings, ratios to standard training.
    #[arg(long)]
    table1: bool,
    /// With --table1: the teacher architecture whose forward pass a CRT step includes.
    #[arg(long, default_value = "resnet20")]
    teacher: Arch,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.batch > 0 && args.steps > 0, "--batch and --steps must be at least 1");
    let device = candle_core::Device::Cpu;
    let what =
        format!("{} on {}, batch {}, {} steps", args.arch.as_str(), args.dataset.as_str(), args.batch, args.steps);
    if args.table1 {
        let settings = reference_settings(args.sigma);
        let rows = table1_costs(args.arch, args.teacher, args.dataset, args.batch, args.steps, &settings, &device)?;
        println!("{what} (loss + backward; ratio to standard training):");
        println!("{:<24} {:>12} {:>12} {:>8}", "method", "ms/step", "x standard", "paper");
        for r in rows {
            let paper = r.paper_ratio.map(|p| format!("{p:.1}")).unwrap_or_else(|| "-".into());
            println!("{:<24} {:>12.1} {:>12.2} {:>8}", r.label, r.seconds_per_step * 1e3, r.relative, paper);
        }
        for s in settings {
            println!("  {}: {}", s.method.name(), s.source);
        }
        return Ok(());
    }
    let costs = method_costs(args.arch, args.dataset, args.batch, args.steps, args.sigma, &device)?;
    println!("{what} (loss + backward, reference defaults):");
    println!("{:<16} {:>12} {:>10}", "method", "ms/step", "x gaussian");
    for c in costs {
        println!("{:<16} {:>12.1} {:>10.2}", c.name, c.seconds_per_step * 1e3, c.relative);
    }
    Ok(())
}
