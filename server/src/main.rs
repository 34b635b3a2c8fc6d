use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = crt_server::cli::Cli::parse();
    crt_server::logging::init();
    crt_server::serve(cli).await
}
