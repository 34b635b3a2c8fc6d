//! Step cost of every training method relative to Gaussian augmentation, in one invocation:
//! `cargo run --release -p crt-trainer --example method_cost -- --arch lenet --batch 64 --steps 20`.

use clap::Parser;
use crt_trainer::config::{Arch, Dataset};
use crt_trainer::methods::cost::method_costs;

#[derive(Parser)]
struct Args {
    /// Architecture: linear, lenet, resnet20, resnet56, resnet110.
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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.batch > 0 && args.steps > 0, "--batch and --steps must be at least 1");
    let costs = method_costs(args.arch, args.dataset, args.batch, args.steps, args.sigma, &candle_core::Device::Cpu)?;
    println!(
        "{} on {}, batch {}, {} steps (loss + backward, reference defaults):",
        args.arch.as_str(),
        args.dataset.as_str(),
        args.batch,
        args.steps
    );
    println!("{:<16} {:>12} {:>10}", "method", "ms/step", "x gaussian");
    for c in costs {
        println!("{:<16} {:>12.1} {:>10.2}", c.name, c.seconds_per_step * 1e3, c.relative);
    }
    Ok(())
}
