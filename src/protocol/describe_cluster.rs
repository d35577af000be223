//! DescribeCluster: the brokers and the controller, for admin clients.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterResponse};
use kafka_protocol::protocol::VersionRange;

use super::str_bytes;
use crate::cluster::Cluster;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 1 };

pub fn handle(cluster: &Cluster) -> DescribeClusterResponse {
    let brokers = cluster
        .brokers()
        .into_iter()
        .map(|(id, host, port)| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(id as i32))
                .with_host(str_bytes(host))
                .with_port(port)
        })
        .collect();
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(cluster.config().cluster_id.clone()))
        .with_controller_id(BrokerId(cluster.controller_leader().map_or(-1, |id| id as i32)))
        .with_brokers(brokers)
}
