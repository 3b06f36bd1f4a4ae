//! The `cascade` command line: parse, configure, start.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use cascade::config::Config;
use cascade::state::AppState;

/// mimalloc's per-thread free lists: the reactor threads, the inference
/// pool and the batcher free each other's buffers all the time, which glibc
/// serialises on its arena locks (see benches/RESULTS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Start-up decodes the catalog, copies it into its row table and reads the
/// index dump: hundreds of MB freed again at a million items. mimalloc
/// keeps freed pages until the thread that freed them allocates again,
/// which the loading thread may never do; hand them back to the OS now.
fn release_freed_memory() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: mi_collect takes no arguments but a flag and only walks
    // mimalloc's own heaps.
    unsafe {
        libmimalloc_sys::mi_collect(true)
    }
}

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
    /// Replay held-out interactions through the serving pipeline (offline)
    /// and print recall@k and NDCG@10 per segment.
    Eval(EvalArgs),
    /// Write a synthetic catalog of any size (benches and load tests).
    Catalog(CatalogArgs),
    /// Compute a model's declared features for historical rows (training
    /// matrices), with the code that serves them.
    Features(FeaturesArgs),
    /// Join the ranking log with the outcomes into training rows (one per
    /// ranking and shown item, with the features that were served).
    Dataset(DatasetArgs),
    /// Retrieval index tools.
    #[command(subcommand)]
    Index(IndexCommand),
}

#[derive(clap::Args)]
struct CatalogArgs {
    /// Where the catalog files go (a directory, created if needed).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    items: usize,
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Embedding dimension.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    #[arg(long, default_value_t = 1000)]
    clusters: usize,
    /// Spread of items around their cluster centre (unit-norm offsets × this).
    #[arg(long, default_value_t = 0.5)]
    spread: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The catalog whose schema and per-row fields are resampled.
    #[arg(long, default_value = "models/catalog")]
    template: PathBuf,
}

#[derive(clap::Args)]
struct DatasetArgs {
    /// The app's configuration (its catalog, feedback.log_dir, state.dir).
    #[arg(long, default_value = "config/default.toml")]
    config: PathBuf,
    /// An app folder holding config.toml (instead of --config).
    #[arg(long)]
    app: Option<PathBuf>,
    /// The ranking log's folder (default: the configuration's
    /// feedback.log_dir).
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Outcome events from a Parquet file too (user_id, item_id, kind,
    /// timestamp, request_id, and optionally id).
    #[arg(long)]
    events: Option<PathBuf>,
    /// Do not read outcomes from the state folder's event log.
    #[arg(long)]
    no_state: bool,
    /// Answers served at or after this time only (epoch ms).
    #[arg(long)]
    since: Option<i64>,
    /// Answers served before this time only (epoch ms).
    #[arg(long)]
    until: Option<i64>,
    /// Where the Parquet training rows go.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct FeaturesArgs {
    /// The app's configuration (its catalog and model repository).
    #[arg(long, default_value = "config/default.toml")]
    config: PathBuf,
    /// An app folder holding config.toml (instead of --config).
    #[arg(long)]
    app: Option<PathBuf>,
    /// The model whose [input] features to compute.
    #[arg(long)]
    model: String,
    /// A catalog folder to read instead of the configured one (e.g. a
    /// snapshot taken at an earlier time).
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Parquet rows: item_id, user_id, timestamp and context columns.
    #[arg(long)]
    rows: PathBuf,
    /// Parquet interactions (user_id, item_id, kind, value, timestamp)
    /// replayed in time order for count() and recency(): each row sees
    /// the ones before its timestamp.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Where the Parquet matrix goes (one float32 column per feature).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Build the HNSW index over item vectors and dump it to a file that the
    /// server loads at start (`ranking.hnsw.index_file`).
    Build(IndexBuildArgs),
}

#[derive(clap::Args)]
struct IndexBuildArgs {
    /// A `[items, dim]` float32 .npy file, or a catalog folder (its item
    /// retrieval vectors, e.g. models/catalog).
    #[arg(long)]
    vectors: PathBuf,
    /// Where to write the dump.
    #[arg(long)]
    out: PathBuf,
    /// Links per node (M); must equal `ranking.hnsw.max_connections` of the
    /// server that loads the dump.
    #[arg(long, default_value_t = 16)]
    max_connections: usize,
    /// Build breadth; must equal `ranking.hnsw.ef_construction`.
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
}

#[derive(clap::Args)]
struct EvalArgs {
    #[arg(long, default_value = "config/default.toml")]
    config: PathBuf,
    /// JSONL of evaluation cases (written by models/train/run.sh).
    #[arg(long, default_value = "models/train/.cache/eval_requests.jsonl")]
    requests: PathBuf,
    /// Items per answer (recall@k).
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Parquet interactions (user_id, item_id, kind, value, timestamp)
    /// played as live events in time order while the cases are ranked,
    /// each case as of its `timestamp`. Default: `eval_events.parquet`
    /// beside the requests file, when there is one (run.sh writes both).
    #[arg(long)]
    events: Option<PathBuf>,
    /// Play no events, not even the default file.
    #[arg(long, conflicts_with = "events")]
    no_events: bool,
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
        Some(Command::Eval(args)) => return eval(args),
        Some(Command::Catalog(args)) => return synth_catalog(args),
        Some(Command::Features(args)) => return features(args),
        Some(Command::Dataset(args)) => return dataset(args),
        Some(Command::Index(IndexCommand::Build(args))) => return index_build(args),
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
        // Bind first: a busy port is reported at once, not after the models
        // and the index have loaded.
        let public_addr = config.listen_addr();
        let admin_addr = config.admin_addr();
        let public = tokio::net::TcpListener::bind(public_addr)
            .await
            .with_context(|| format!("server.listen: cannot bind {public_addr}"))?;
        let admin = tokio::net::TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("server.admin_listen: cannot bind {admin_addr}"))?;
        // From here SIGHUP rescans the repository instead of killing us.
        let hangups = hangup_signals();
        let started = std::time::Instant::now();
        let state = Arc::new(AppState::load(config).context("starting")?);
        release_freed_memory();
        tracing::info!(
            models = state.registry.entries().len(),
            millis = started.elapsed().as_millis() as u64,
            "models loaded, warmed up and vetted"
        );
        if let Some(hangups) = hangups {
            reload_on_hangup(hangups, Arc::downgrade(&state));
        }
        tracing::info!(public = %public.local_addr()?, admin = %admin.local_addr()?, "cascade listening");
        let shutdown = async {
            let first = cascade::server::shutdown_signal().await;
            // A second signal means "now": in-flight work is cut short.
            tokio::spawn(async {
                cascade::server::shutdown_signal().await;
                tracing::warn!("second shutdown signal: exiting without waiting");
                std::process::exit(1);
            });
            first
        };
        cascade::server::run(public, admin, state, shutdown).await;
        tracing::info!("stopped");
        Ok(())
    })
}

#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = ();

/// Takes over SIGHUP (whose default action ends the process).
fn hangup_signals() -> Option<Hangups> {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
    #[cfg(not(unix))]
    None
}

/// Every SIGHUP rescans the model repository, as the reload call does for
/// each model (new versions load, are vetted, then serve).
fn reload_on_hangup(mut hangups: Hangups, state: std::sync::Weak<AppState>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let Some(state) = state.upgrade() else { return };
            tracing::info!("SIGHUP: rescanning the model repository");
            let _ = tokio::task::spawn_blocking(move || state.reload_all()).await;
        }
    });
    #[cfg(not(unix))]
    let _ = (hangups, state);
}

fn synth_catalog(args: CatalogArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let spec = cascade::catalog::generate::Spec {
        items: args.items,
        users: args.users,
        dim: args.dim,
        clusters: args.clusters,
        spread: args.spread,
        seed: args.seed,
    };
    cascade::catalog::generate::write(&args.template, &spec, &args.out)
        .map_err(anyhow::Error::msg)?;
    eprintln!(
        "wrote {} items and {} users ({} dims) to {} in {:.1} s",
        args.items,
        args.users,
        args.dim,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn features(args: FeaturesArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let config_path = match &args.app {
        Some(dir) => dir.join("config.toml"),
        None => args.config.clone(),
    };
    let config = Config::load(Some(&config_path), std::env::vars())?;
    let catalog_dir = args.catalog.unwrap_or(config.ranking.catalog);
    let catalog = cascade::catalog::Catalog::load(&catalog_dir)?;
    let shown = format!("{}/config.toml", args.model);
    let spec_path = config
        .models
        .repository
        .join(&args.model)
        .join("config.toml");
    let text = std::fs::read_to_string(&spec_path)
        .with_context(|| format!("--model {}: no {shown} in the repository", args.model))?;
    let spec = cascade::model::spec::ModelSpec::parse(&text, &shown)?;
    let input = spec
        .input
        .ok_or_else(|| anyhow::anyhow!("{shown}: the model declares no [input] features"))?;
    let n = cascade::offline::run(
        &catalog,
        &input.features,
        &args.rows,
        args.events.as_deref(),
        &args.out,
    )
    .map_err(anyhow::Error::msg)?;
    eprintln!(
        "{n} rows × {} features of {} written to {} in {:.1} s",
        input.features.len(),
        args.model,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn dataset(args: DatasetArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let config_path = match &args.app {
        Some(dir) => dir.join("config.toml"),
        None => args.config.clone(),
    };
    let config = Config::load(Some(&config_path), std::env::vars())?;
    let catalog = cascade::catalog::Catalog::load(&config.ranking.catalog)?;
    let logs = args
        .logs
        .or(config.feedback.log_dir.clone())
        .ok_or_else(|| {
            anyhow::anyhow!("--logs: no folder given and feedback.log_dir is not set")
        })?;
    let events = match &args.events {
        Some(path) => cascade::offline::read_events(&catalog, path).map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    let state_dir = (!args.no_state && config.state.backend == "embedded")
        .then_some(config.state.dir.as_path());
    let (columns, summary) =
        cascade::feedback::dataset::build(&cascade::feedback::dataset::Sources {
            logs: &logs,
            state_dir,
            events,
            kinds: &catalog.schema.outcome_kinds,
            window_ms: cascade::data::schema::duration_ms(&config.feedback.attribution_window)
                .map_err(anyhow::Error::msg)?,
            since: args.since,
            until: args.until,
        })
        .map_err(anyhow::Error::msg)?;
    let (names, columns): (Vec<String>, Vec<_>) = columns.into_iter().unzip();
    cascade::data::parquet::write(
        &args.out,
        names.iter().map(String::as_str).zip(columns).collect(),
    )
    .map_err(anyhow::Error::msg)?;
    eprintln!(
        "{} rows from {} rankings ({} outcomes joined, {} naming no logged answer, {} log lines skipped) written to {} in {:.1} s",
        summary.rows,
        summary.rankings,
        summary.outcomes_joined,
        summary.outcomes_unjoined,
        summary.lines_skipped,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let mut config = Config::load(Some(&args.config), std::env::vars())?;
    // The replay ranks against the snapshot alone: an empty event log of
    // its own, never a running server's.
    let scratch = std::env::temp_dir().join(format!("cascade-eval-{}", std::process::id()));
    config.state.dir = scratch.clone();
    let _cleanup = RemoveOnDrop(scratch);
    config.validate()?;
    cascade::telemetry::init_logging(&config.logging);
    let cases = cascade::eval::read_cases(&args.requests)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.server.worker_threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let state = AppState::load(config).context("starting")?;
        let beside = args.requests.with_file_name("eval_events.parquet");
        let events_file = match (&args.events, args.no_events) {
            (Some(path), _) => Some(path.clone()),
            (None, false) if beside.is_file() => Some(beside),
            _ => None,
        };
        if let Some(path) = &events_file {
            println!("playing the interactions of {}", path.display());
        }
        let events = match (&events_file, &state.pipeline) {
            (Some(path), Some(p)) => {
                cascade::offline::read_events(&p.catalog(), path).map_err(anyhow::Error::msg)?
            }
            _ => Vec::new(),
        };
        let started = std::time::Instant::now();
        let n = cases.len();
        let scores = cascade::eval::run(&state, cases, args.k, events).await?;
        println!(
            "{:<24} {:>6} {:>9} {:>10} {:>9}",
            "segment",
            "users",
            "NDCG@10",
            format!("recall@{}", args.k),
            "degraded"
        );
        for (segment, s) in &scores {
            println!(
                "{segment:<24} {:>6} {:>9.4} {:>10.4} {:>9}",
                s.users, s.ndcg_at_10, s.recall_at_k, s.degraded
            );
        }
        println!(
            "{n} requests replayed in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

fn index_build(args: IndexBuildArgs) -> anyhow::Result<()> {
    use cascade::catalog::index::{HnswIndex, HnswParams};
    use std::time::{Duration, Instant};

    anyhow::ensure!(
        (1..=255).contains(&args.max_connections),
        "--max-connections must be between 1 and 255"
    );
    anyhow::ensure!(
        args.ef_construction >= 1,
        "--ef-construction must be at least 1"
    );
    let (vectors, dim) = if args.vectors.is_dir() {
        let catalog = cascade::catalog::Catalog::load(&args.vectors)?;
        let (vectors, dim) = catalog.item_vectors().ok_or_else(|| {
            anyhow::anyhow!("--vectors: the catalog declares no retrieval.item_vector")
        })?;
        (vectors.to_vec(), dim)
    } else {
        cascade::catalog::npy::read::<f32>(&args.vectors)
            .map_err(|e| anyhow::anyhow!("--vectors {}: {e}", args.vectors.display()))?
    };
    anyhow::ensure!(
        vectors.iter().all(|x| x.is_finite()),
        "--vectors {}: has a non-finite value",
        args.vectors.display()
    );
    let n = vectors.len() / dim;
    eprintln!(
        "building HNSW over {n} items × {dim} (M {}, ef_construction {})",
        args.max_connections, args.ef_construction
    );
    let params = HnswParams {
        max_connections: args.max_connections,
        ef_construction: args.ef_construction,
        ..HnswParams::default()
    };
    let started = Instant::now();
    let mut last = Instant::now();
    let index = HnswIndex::build_with_progress(&vectors, dim, &params, &mut |done, total| {
        if last.elapsed() >= Duration::from_secs(2) || done == total {
            eprintln!(
                "  {:5.1}% inserted ({done}/{total}), {:.0} s",
                100.0 * done as f64 / total.max(1) as f64,
                started.elapsed().as_secs_f64()
            );
            last = Instant::now();
        }
    });
    let built = started.elapsed();
    let t = Instant::now();
    cascade::catalog::persist::save(index.graph(), &args.out)
        .with_context(|| format!("--out {}: cannot write", args.out.display()))?;
    let size = std::fs::metadata(&args.out).map_or(0, |m| m.len());
    eprintln!(
        "built in {:.1} s, wrote {} ({:.1} MiB) in {:.1} s",
        built.as_secs_f64(),
        args.out.display(),
        size as f64 / (1024.0 * 1024.0),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Removes a scratch folder when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
