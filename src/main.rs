//! The `cascade` command line: parse, configure, start.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use cascade::config::Config;
use cascade::state::AppState;

#[derive(Parser)]
#[command(
    name = "cascade",
    version,
    about = "Low-latency inference and multi-stage ranking server"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the models of the configured repository (the default command).
    Serve(ServeArgs),
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// Configuration file (TOML).
    #[arg(long, default_value = "config/default.toml")]
    config: PathBuf,
    /// Public API address, overriding `server.listen`.
    #[arg(long)]
    listen: Option<String>,
    /// Admin/metrics address, overriding `server.admin_listen`.
    #[arg(long)]
    admin_listen: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => ServeArgs {
            config: PathBuf::from("config/default.toml"),
            ..ServeArgs::default()
        },
    };
    serve(args)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(Some(&args.config), std::env::vars())?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(admin) = args.admin_listen {
        config.server.admin_listen = admin;
    }
    config.validate()?;
    cascade::telemetry::init_logging(&config.logging);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.worker_threads)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let public_addr = config.listen_addr();
        let admin_addr = config.admin_addr();
        let started = std::time::Instant::now();
        let state = Arc::new(AppState::load(config).context("loading models")?);
        tracing::info!(
            models = state.registry.entries().len(),
            millis = started.elapsed().as_millis() as u64,
            "models loaded, warmed up and vetted"
        );
        let public = tokio::net::TcpListener::bind(public_addr)
            .await
            .with_context(|| format!("server.listen: cannot bind {public_addr}"))?;
        let admin = tokio::net::TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("server.admin_listen: cannot bind {admin_addr}"))?;
        tracing::info!(public = %public.local_addr()?, admin = %admin.local_addr()?, "cascade listening");
        cascade::server::run(public, admin, state, cascade::server::shutdown_signal()).await;
        tracing::info!("stopped");
        Ok(())
    })
}
