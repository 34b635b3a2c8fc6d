use clap::Parser;

use crt_trainer::cli::{self, Cli, Command};
use crt_trainer::report::Reporter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let threads = crt_trainer::device::init_threads(cli.threads);
    // Keep freed activation buffers in the heap (page faults cost ~20% of a training step otherwise).
    crt_trainer::kernels::tune_allocator();
    let reporter = Reporter::new(cli.output());
    match run(cli, threads, &reporter) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, threads: usize, reporter: &Reporter) -> anyhow::Result<()> {
    let stop = crt_trainer::stop::StopFlag::from_signals()?;
    let device = crt_trainer::device::select(&cli.device)?;
    let ctx = cli::run::Context { device, reporter, stop, threads };
    match cli.command {
        Command::Run { config } => cli::run::execute(cli::read_config(&config)?, &ctx),
        Command::Data { cmd } => cli::data::execute(cmd),
        Command::Bench(args) => cli::bench::execute(args, &ctx.device, ctx.threads),
        Command::Train(args) => cli::run::execute(args.into_run_config()?, &ctx),
        Command::Transfer(args) => cli::run::execute(args.into_run_config()?, &ctx),
        Command::Certify(args) => cli::run::execute(args.into_run_config()?, &ctx),
        Command::Predict(args) => cli::run::execute(args.into_run_config()?, &ctx),
    }
}
