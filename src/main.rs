use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use rafka::cluster::Cluster;
use rafka::config::BrokerConfig;
use rafka::group::coordinator::GroupCoordinator;
use rafka::protocol::Broker;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

const MEMORY_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

#[global_allocator]
static ALLOCATOR: rafka::huge_alloc::ReservingAllocator = rafka::huge_alloc::ReservingAllocator;

/// A Kafka-wire-compatible broker whose partitions are replicated by Raft.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file; every key can be overridden by RAFKA_<KEY>.
    #[arg(long, short, default_value = "configs/single-node.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Tool>,
}

#[derive(clap::Subcommand)]
enum Tool {
    /// List consumer groups with members, assignments, committed offsets and lag.
    Groups {
        /// A broker to ask, host:port.
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap: String,
    },
    /// Exit 0 if the broker answers Metadata and knows a controller leader (for health checks).
    Health {
        /// The broker to check, host:port.
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap: String,
    },
    /// Print a checksum of every partition replica a node holds, as JSON.
    Checksums {
        /// The node's Raft address, host:port.
        #[arg(long)]
        peer: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match args.command {
        Some(Tool::Groups { bootstrap }) => return rafka::admin::print_groups(&bootstrap),
        Some(Tool::Health { bootstrap }) => return rafka::admin::check_health(&bootstrap),
        Some(Tool::Checksums { peer }) => return rafka::admin::print_checksums(&peer),
        None => {}
    }
    let cfg = BrokerConfig::load(&args.config).with_context(|| format!("loading {}", args.config.display()))?;
    rafka::huge_alloc::limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(Arc::new(cfg)))
}

async fn run(cfg: Arc<BrokerConfig>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(cfg.listener)
        .await
        .with_context(|| format!("binding {}", cfg.listener))?;
    let cluster = Cluster::start(Arc::clone(&cfg), shutdown.clone())
        .await
        .context("starting raft groups")?;
    // The absolute path, so that whoever started the broker from a script knows
    // which directory holds its data.
    let data_dir = std::fs::canonicalize(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
    tracing::info!(node_id = cfg.node_id, listener = %cfg.listener, advertised = %cfg.advertised_listener(), data_dir = %data_dir.display(), "broker ready");
    let groups = GroupCoordinator::start(Arc::clone(&cluster), shutdown.clone());
    let broker = Arc::new(Broker {
        cluster: Arc::clone(&cluster),
        groups,
    });
    let server = tokio::spawn(rafka::server::serve(listener, broker, shutdown.clone()));
    tokio::spawn(trim_memory(shutdown.clone()));
    wait_for_signal().await?;
    tracing::info!("shutting down");
    shutdown.cancel();
    let _ = server.await;
    cluster.shutdown().await;
    Ok(())
}

/// Produce bursts leave freed batches with the allocator; hand them back to the
/// kernel now and then so an idle broker's footprint shrinks again.
async fn trim_memory(shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(MEMORY_TRIM_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        tokio::task::spawn_blocking(rafka::huge_alloc::release_free_memory);
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
