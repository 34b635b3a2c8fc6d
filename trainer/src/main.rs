use clap::Parser;

use crt_trainer::cli::{self, Cli, Command};
use crt_trainer::report::Reporter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Supervise(_)) {
        let Command::Supervise(args) = cli.command else { unreachable!("matched above") };
        return supervise(args);
    }
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

/// The supervisor: no signal flag, threads or allocator tuning of its own; exits as the child did.
fn supervise(args: cli::supervise::SuperviseArgs) -> std::process::ExitCode {
    match cli::supervise::execute(args) {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
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
        Command::Supervise(_) => unreachable!("handled in main"),
        Command::Data { cmd } => cli::data::execute(cmd),
        Command::Import(args) => cli::import::execute(args, &ctx.device),
        Command::Bench(args) => cli::bench::execute(args, &ctx.device, ctx.threads),
        Command::Train(args) => cli::run::execute(args.into_run_config()?, &ctx),
        Command::Transfer(args) => cli::run::execute(args.into_run_config()?, &ctx),
        Command::Certify(args) => cli::run::execute(args.into_run_config()?, &ctx),
        Command::Predict(args) => cli::run::execute(args.into_run_config()?, &ctx),
    }
}
