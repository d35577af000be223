//! # Layout
//!
//! A Kafka-wire-compatible broker whose partitions are replicated by Raft.
//! Modules follow the data flow of a request:
//!
//! - [`server`]: accepts TCP connections, frames requests, answers them in order.
//! - [`protocol`]: sans-io codec (`kafka-protocol`) and one handler per Kafka API.
//! - [`records`]: record format conversion (message sets of Kafka 0.8-0.10 to and
//!   from the v2 batches the partition log holds).
//! - [`cluster`]: topics and partition assignments (the controller group's state),
//!   and routing of reads and writes to the partition groups this node runs.
//! - [`group`]: the consumer-group coordinator; committed offsets replicated by
//!   the `__consumer_offsets` partitions.
//! - [`raft`]: openraft type config, the replicated command, log store, state
//!   machine, snapshots and network.
//! - [`storage`]: the RocksDB key layout, record batch validation and partition reads.
//! - [`error`]: broker errors and their single mapping to Kafka error codes.
//! - [`admin`]: the admin CLI over the Kafka protocol: topics, cluster, consumer groups, health.
//! - [`admin_http`]: the admin HTTP listener: `/metrics`, `/health`, `/ready`.
//! - [`metrics`]: every exported metric, defined in one place.
//! - [`logging`]: log format and the filter that keeps peer hiccups out of ERROR.
//! - [`config`]: configuration files plus environment overrides.
//! - [`clock`]: the wall clock, read by leaders and handlers only.
//! - [`huge_alloc`]: the global allocator that keeps absurd decoded sizes from aborting.

pub mod admin;
pub mod admin_http;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod group;
pub mod huge_alloc;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod raft;
pub mod records;
pub mod server;
pub mod storage;
