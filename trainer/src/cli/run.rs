//! Executes one run configuration: validation, the started event, the work, and the final event.

use std::time::Instant;

use crate::config::RunConfig;
use crate::events::Event;

pub use crate::context::{Context, Outcome};

/// Validates, reports `started`, runs, and reports `finished`, `stopped` or `failed`.
pub fn execute(config: RunConfig, ctx: &Context) -> anyhow::Result<()> {
    config.validate()?;
    let config = resolve(config);
    let started = Instant::now();
    ctx.reporter.emit(Event::Started {
        config: Box::new(config.clone()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        device: crate::device::describe(&ctx.device),
        threads: ctx.threads,
        resumed_from_step: resumed_from_step(&config),
    });
    match dispatch(config, ctx) {
        Ok(Outcome::Finished { summary }) => {
            ctx.reporter.emit(Event::Finished { wall_time_s: started.elapsed().as_secs_f64(), summary });
            Ok(())
        }
        Ok(Outcome::Stopped { checkpoint }) => {
            ctx.reporter.emit(Event::Stopped { wall_time_s: started.elapsed().as_secs_f64(), checkpoint });
            Ok(())
        }
        Err(e) => {
            ctx.reporter.emit(Event::Failed { error: format!("{e:#}") });
            Err(e)
        }
    }
}

/// The step a `resume` run continues from, when its output directory holds a checkpoint.
fn resumed_from_step(config: &RunConfig) -> Option<u64> {
    let resume = match config {
        RunConfig::Train(c) => c.resume,
        RunConfig::Transfer(c) => c.resume,
        _ => false,
    };
    resume.then(|| crate::train::checkpoint::peek_step(config.out_dir())).flatten()
}

fn resolve(config: RunConfig) -> RunConfig {
    match config {
        RunConfig::Train(c) => RunConfig::Train(c.resolve()),
        RunConfig::Transfer(c) => RunConfig::Transfer(c.resolve()),
        other => other,
    }
}

fn dispatch(config: RunConfig, ctx: &Context) -> anyhow::Result<Outcome> {
    match config {
        RunConfig::Train(c) => crate::train::train(&c, ctx),
        RunConfig::Transfer(c) => crate::train::transfer::transfer(&c, ctx),
        RunConfig::Certify(c) => crate::certify::run_certify(&c, ctx),
        RunConfig::Predict(c) => crate::certify::run_predict(&c, ctx),
    }
}
