use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rafka::admin_http::AdminState;
use rafka::cluster::Cluster;
use rafka::config::BrokerConfig;
use rafka::group::coordinator::GroupCoordinator;
use rafka::protocol::Broker;
use rafka::raft::handshake::PeerCredentials;
use tokio_util::sync::CancellationToken;

const MEMORY_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a shutdown spends handing leadership over before it stops serving
/// (then up to `server::DRAIN_TIMEOUT` answering the requests in flight): the
/// two together stay under the 10 s a service manager usually waits.
const HAND_OVER_ON_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(3);

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
    /// Topics: list, describe, create, delete, alter-config.
    Topic {
        #[command(subcommand)]
        verb: TopicVerb,
    },
    /// The cluster as a broker reports it.
    Cluster {
        #[command(subcommand)]
        verb: ClusterVerb,
    },
    /// Consumer groups: list, describe (members, committed offsets, lag), delete, reset-offsets.
    Group {
        #[command(subcommand)]
        verb: GroupVerb,
    },
    /// Produce one record per line of stdin (acks=all).
    Produce {
        topic: String,
        /// The key of every record.
        #[arg(long)]
        key: Option<String>,
        /// Write to this partition; otherwise by the key's hash as Kafka's
        /// clients do, or round-robin by line without a key.
        #[arg(long)]
        partition: Option<i32>,
        #[command(flatten)]
        target: Target,
    },
    /// Print records' values (with --json, one JSON object per record and line).
    Consume {
        topic: String,
        /// Start at the log start; otherwise only records produced from now on.
        #[arg(long)]
        from_beginning: bool,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<u64>,
        /// Only this partition.
        #[arg(long)]
        partition: Option<i32>,
        /// Stop when no record arrived for this long; an error if --count was not reached.
        #[arg(long)]
        timeout_ms: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// The same as `group describe`, under its older name.
    #[command(hide = true)]
    Groups {
        #[command(flatten)]
        target: Target,
    },
    /// Exit 0 if the broker is ready: with --admin, its /ready endpoint answers
    /// 200; otherwise it answers Metadata on --bootstrap and knows a controller leader.
    Health {
        /// The broker to check, host:port.
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// The broker's admin listener, host:port: check GET /ready there instead.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Print a checksum of every partition replica a node holds, as JSON.
    Checksums {
        /// The node's Raft address, host:port.
        #[arg(long)]
        peer: String,
        /// The cluster's id, which the node checks in the peer handshake.
        #[arg(long, env = "RAFKA_CLUSTER_ID", default_value = "rafka")]
        cluster_id: String,
        /// The cluster's secret, if it has one (best passed in the environment).
        #[arg(long, env = "RAFKA_CLUSTER_SECRET", hide_env_values = true)]
        cluster_secret: Option<String>,
    },
}

/// Where an admin verb connects and how it prints.
#[derive(clap::Args)]
struct Target {
    /// A broker to ask, host:port (any Kafka-compatible broker).
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum TopicVerb {
    /// Every topic with its partition count and replication factor.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Partitions (leader, replicas, ISR) and configs of topics.
    Describe {
        #[arg(required = true)]
        topics: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Create a topic.
    Create {
        topic: String,
        /// Partitions; the broker's default when omitted.
        #[arg(long, short, default_value_t = -1)]
        partitions: i32,
        /// Replicas of each partition; the broker's default when omitted.
        #[arg(long, short, default_value_t = -1)]
        replication_factor: i16,
        /// A topic config as key=value; repeatable.
        #[arg(long = "config", short)]
        configs: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Delete topics.
    Delete {
        #[arg(required = true)]
        topics: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Change a topic's configs (IncrementalAlterConfigs); other configs keep their values.
    AlterConfig {
        topic: String,
        /// Set a config, key=value; repeatable.
        #[arg(long = "set")]
        set: Vec<String>,
        /// Return a config to its default; repeatable.
        #[arg(long = "delete")]
        delete: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Subcommand)]
enum ClusterVerb {
    /// Cluster id, controller, brokers and the partitions each leads and holds.
    Info {
        #[command(flatten)]
        target: Target,
    },
    /// Leaders per broker, how many are preferred replicas, and the imbalance.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Move leadership to the preferred (first) replicas (Kafka's ElectLeaders).
    ElectLeaders {
        /// Only this topic; every partition of every topic when omitted.
        #[arg(long)]
        topic: Option<String>,
        /// Only this partition of --topic.
        #[arg(long, requires = "topic")]
        partition: Option<i32>,
        #[command(flatten)]
        target: Target,
    },
    /// Move a partition's replicas to other brokers, or cancel a move
    /// (Kafka's AlterPartitionReassignments).
    Reassign {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        partition: i32,
        /// The new replicas, comma-separated broker ids, the preferred leader first.
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present = "cancel",
            conflicts_with = "cancel"
        )]
        replicas: Option<Vec<i32>>,
        /// Cancel the move in progress: the replicas go back to where they were.
        #[arg(long)]
        cancel: bool,
        /// Wait until the move is done, at most this many seconds.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// The replica moves under way (Kafka's ListPartitionReassignments).
    Reassignments {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(clap::Subcommand)]
enum GroupVerb {
    /// Every consumer group with its state.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Members, assignments, committed offsets and lag per partition.
    Describe {
        /// Only this group; every group when omitted.
        group: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Delete groups that have no members, with their committed offsets.
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Commit new offsets for a group without members, for every partition of a topic.
    #[command(group(clap::ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_offset"])))]
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        /// Each partition's log start.
        #[arg(long)]
        to_earliest: bool,
        /// Each partition's log end.
        #[arg(long)]
        to_latest: bool,
        /// This offset (moved into each partition's range).
        #[arg(long)]
        to_offset: Option<i64>,
        #[command(flatten)]
        target: Target,
    },
}

/// Runs an admin verb.
fn run_tool(tool: Tool) -> anyhow::Result<()> {
    use rafka::admin;
    match tool {
        Tool::Topic { verb } => match verb {
            TopicVerb::List { target } => admin::topic::list(&target.bootstrap, target.json),
            TopicVerb::Describe { topics, target } => admin::topic::describe(&target.bootstrap, &topics, target.json),
            TopicVerb::Create {
                topic,
                partitions,
                replication_factor,
                configs,
                target,
            } => {
                let new = admin::topic::NewTopic {
                    name: &topic,
                    partitions,
                    replication_factor,
                    configs: &configs,
                };
                admin::topic::create(&target.bootstrap, &new, target.json)
            }
            TopicVerb::Delete { topics, target } => admin::topic::delete(&target.bootstrap, &topics, target.json),
            TopicVerb::AlterConfig {
                topic,
                set,
                delete,
                target,
            } => admin::topic::alter_config(&target.bootstrap, &topic, &set, &delete, target.json),
        },
        Tool::Cluster { verb } => match verb {
            ClusterVerb::Info { target } => admin::cluster::info(&target.bootstrap, target.json),
            ClusterVerb::Status { target } => admin::cluster::status(&target.bootstrap, target.json),
            ClusterVerb::ElectLeaders {
                topic,
                partition,
                target,
            } => admin::cluster::elect_leaders(&target.bootstrap, topic.as_deref(), partition, target.json),
            ClusterVerb::Reassign {
                topic,
                partition,
                replicas,
                cancel: _,
                wait,
                target,
            } => {
                let wanted = admin::reassign::Move {
                    topic: &topic,
                    partition,
                    replicas,
                    wait: wait.map(Duration::from_secs),
                };
                admin::reassign::reassign(&target.bootstrap, &wanted, target.json)
            }
            ClusterVerb::Reassignments { target } => admin::reassign::list(&target.bootstrap, target.json),
        },
        Tool::Group { verb } => match verb {
            GroupVerb::List { target } => admin::list_groups(&target.bootstrap, target.json),
            GroupVerb::Describe { group, target } => {
                admin::describe_groups(&target.bootstrap, group.as_deref(), target.json)
            }
            GroupVerb::Delete { groups, target } => admin::group::delete(&target.bootstrap, &groups, target.json),
            GroupVerb::ResetOffsets {
                group,
                topic,
                to_latest,
                to_offset,
                target,
                ..
            } => {
                use admin::group::ResetTo;
                // The "to" argument group makes exactly one of the three present.
                let to = match (to_offset, to_latest) {
                    (Some(offset), _) => ResetTo::Offset(offset),
                    (None, true) => ResetTo::Latest,
                    (None, false) => ResetTo::Earliest,
                };
                admin::group::reset_offsets(&target.bootstrap, &group, &topic, to, target.json)
            }
        },
        Tool::Produce {
            topic,
            key,
            partition,
            target,
        } => admin::records::produce(&target.bootstrap, &topic, key.as_deref(), partition, target.json),
        Tool::Consume {
            topic,
            from_beginning,
            count,
            partition,
            timeout_ms,
            target,
        } => admin::records::consume(
            &target.bootstrap,
            &admin::records::ConsumeOptions {
                topic: &topic,
                partition,
                from_beginning,
                count,
                timeout: timeout_ms.map(std::time::Duration::from_millis),
                json: target.json,
            },
        ),
        Tool::Groups { target } => admin::describe_groups(&target.bootstrap, None, target.json),
        Tool::Health {
            admin: Some(address), ..
        } => admin::check_ready(&address),
        Tool::Health { bootstrap, .. } => admin::check_health(&bootstrap),
        Tool::Checksums {
            peer,
            cluster_id,
            cluster_secret,
        } => admin::print_checksums(&peer, PeerCredentials::new(&cluster_id, cluster_secret.as_deref())),
    }
}

fn main() -> anyhow::Result<()> {
    rafka::logging::init()?;
    let args = Args::parse();
    if let Some(tool) = args.command {
        return run_tool(tool);
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
    // First, so that /health answers and /ready says "not yet" while the Raft groups start.
    let admin_listener = tokio::net::TcpListener::bind(cfg.admin_listener)
        .await
        .with_context(|| format!("binding admin_listener {}", cfg.admin_listener))?;
    tracing::info!(admin_listener = %admin_listener.local_addr()?, "serving /metrics, /health and /ready");
    let admin = Arc::new(AdminState::default());
    let admin_server = tokio::spawn(rafka::admin_http::serve(
        admin_listener,
        Arc::clone(&admin),
        shutdown.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(cfg.listener)
        .await
        .with_context(|| format!("binding {}", cfg.listener))?;
    let cluster = Cluster::start(Arc::clone(&cfg), shutdown.clone())
        .await
        .context("starting raft groups")?;
    // The absolute path, so that whoever started the broker from a script knows
    // which directory holds its data.
    let data_dir = std::fs::canonicalize(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
    tracing::info!(node_id = cfg.node_id, listener = %cfg.listener, advertised = %cfg.advertised_listener(), data_dir = %data_dir.display(), "Raft groups started; serving Kafka clients");
    let groups = GroupCoordinator::start(Arc::clone(&cluster), shutdown.clone());
    let broker = Arc::new(Broker {
        cluster: Arc::clone(&cluster),
        groups,
    });
    let server = tokio::spawn(rafka::server::serve(listener, Arc::clone(&broker), shutdown.clone()));
    admin.serving(broker);
    tokio::spawn(trim_memory(shutdown.clone()));
    wait_for_signal().await?;
    // Controlled shutdown: clients keep being served while leadership moves
    // (they are told NOT_LEADER_OR_FOLLOWER and find the new leaders), then
    // the listener stops reading requests and answers those it had read.
    tracing::info!("shutting down: handing leadership to other nodes");
    cluster.hand_over_all(HAND_OVER_ON_SHUTDOWN).await;
    tracing::info!("shutting down: answering the requests in flight");
    shutdown.cancel();
    let _ = server.await;
    let _ = admin_server.await;
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
