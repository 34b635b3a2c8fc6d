use clap::Parser;

use crt_server::cli::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    crt_server::logging::init();
    match &cli.command {
        Some(Command::Token(command)) => crt_server::token_command(&cli, command).await,
        None => crt_server::serve(cli).await,
    }
}
