//! CRT Lab server: experiments and runs in a database (SQLite or Postgres), trainer processes
//! supervised on this machine, their events stored and streamed live, a JSON API.

pub mod auth;
pub mod certified;
pub mod cli;
pub mod devices;
pub mod downsample;
pub mod http;
pub mod import;
pub mod launch;
pub mod logging;
pub mod mlflow;
pub mod record;
pub mod runs;
pub mod store;
pub mod study;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Settings};
use crate::devices::GpuMonitor;
use crate::http::AppState;
use crate::runs::RunManager;
use crate::store::Store;

/// Runs the server until SIGINT or SIGTERM; running trainers then go on (`--on-exit detach`, a
/// restarted server catches up with them) or are stopped, resumable (`--on-exit stop`).
pub async fn serve(cli: Cli) -> anyhow::Result<()> {
    let settings = Arc::new(Settings::from_cli(cli)?);
    let store = Store::open(&settings.database_url).await?;
    if settings.require_auth && store::tokens::count_active(&store).await? == 0 {
        anyhow::bail!(
            "refusing to serve on {} without authentication: no API token exists. Create one with \
             `crt-server token create --scope admin --name <you>` (with the same --data-dir or --database-url), \
             then start the server again; clients send it as `Authorization: Bearer <token>`, browsers log in at /login. \
             (Only a loopback --bind, e.g. 127.0.0.1, may run without tokens.)",
            settings.bind
        );
    }
    let auth = auth::Auth::new(store.clone(), settings.require_auth);
    if !settings.trainer_bin.is_file() {
        tracing::warn!(
            "trainer executable {} not found: runs will fail to start (set --trainer-bin or CRT_TRAINER_BIN)",
            settings.trainer_bin.display()
        );
    }
    if let Some(cuda) = settings.trainer_cuda_bin.as_deref().filter(|p| !p.is_file()) {
        tracing::warn!("CUDA trainer {} not found: GPU runs will fail to start", cuda.display());
    }
    let shutdown = CancellationToken::new();
    let gpus = GpuMonitor::detect(settings.nvidia_smi.clone()).await;
    gpus.spawn_refresh(devices::REFRESH_EVERY, shutdown.clone());
    let manager = RunManager::new(store.clone(), settings.clone(), gpus, shutdown.clone());
    manager.start().await?;

    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .with_context(|| format!("--bind: cannot listen on {}", settings.bind))?;
    let addr = listener.local_addr()?;
    // Scripts and tests read this line to learn the port (with --bind …:0).
    println!("crt-server listening on http://{addr}");
    std::io::stdout().flush()?;
    tracing::info!(data_dir = %settings.data_dir.display(), database = %store::redact(&settings.database_url), "serving on http://{addr}");

    let cluster = match settings.backend {
        launch::BackendKind::Slurm => {
            let monitor = devices::cluster::ClusterMonitor::detect(settings.slurm_defaults.partition.clone()).await;
            monitor.spawn_refresh(Duration::from_secs(10), shutdown.clone());
            Some(monitor)
        }
        launch::BackendKind::Local => None,
    };
    let app =
        http::router(AppState { store, manager: manager.clone(), settings, shutdown: shutdown.clone(), cluster, auth });
    let on_signal = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            on_signal.cancel();
        })
        .await?;
    manager.shutdown().await;
    Ok(())
}

/// `crt-server token …`: manage API tokens in the server's database (the server may be running).
pub async fn token_command(cli: &Cli, command: &cli::TokenCommand) -> anyhow::Result<()> {
    use cli::TokenCommand;
    let store = Store::open(&cli.resolved_database_url()?).await?;
    match command {
        TokenCommand::Create { scope, name } => {
            let name = http::tokens::check_name(name).map_err(|m| anyhow::anyhow!("--name: {m}"))?;
            let (secret, token) = auth::create_token(&store, name, *scope).await?;
            println!("{secret}");
            eprintln!(
                "created token {} '{}' with scope {}: it is shown only now, so store it; revoke it with `crt-server token revoke {}`",
                token.id,
                token.name,
                token.scope.as_str(),
                token.id
            );
        }
        TokenCommand::List => {
            println!("{:>5}  {:<6}  {:<10}  {:<10}  {:<10}  name", "id", "scope", "created", "last used", "revoked");
            for t in store::tokens::list(&store).await? {
                println!(
                    "{:>5}  {:<6}  {:<10}  {:<10}  {:<10}  {}",
                    t.id,
                    t.scope.as_str(),
                    day(Some(t.created_at)),
                    day(t.last_used_at),
                    day(t.revoked_at),
                    t.name
                );
            }
        }
        TokenCommand::Revoke { id } => {
            if !store::tokens::revoke(&store, *id).await? {
                anyhow::bail!("there is no token {id} (see `crt-server token list`)");
            }
            eprintln!("token {id} revoked");
        }
    }
    Ok(())
}

/// A Unix time as a UTC date, for the token list.
fn day(t: Option<f64>) -> String {
    match t.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t as i64).ok()) {
        Some(d) => format!("{}-{:02}-{:02}", d.year(), d.month() as u8, d.day()),
        None => "-".into(),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
