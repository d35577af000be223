//! FindCoordinator: a group's coordinator is the leader of its `__consumer_offsets` partition.
//! v5 only adds TRANSACTION_ABORTABLE (KIP-890); v6 adds share-group keys
//! (KIP-932), which a broker without share groups refuses with
//! INVALID_REQUEST per key, as Kafka 4 does (3.9, whose share coordinator did
//! not exist yet, answered the retriable COORDINATOR_NOT_AVAILABLE, which
//! would have a client retry for ever). Before v6, and for a key type no
//! version defines, Kafka answers INVALID_REQUEST too.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::VersionRange;

use super::{error_message, str_bytes};
use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 6 };

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

pub async fn handle(cluster: &Cluster, version: i16, request: FindCoordinatorRequest) -> FindCoordinatorResponse {
    if version >= 4 {
        let mut coordinators = Vec::with_capacity(request.coordinator_keys.len());
        for key in request.coordinator_keys {
            let result = locate(cluster, request.key_type, key.as_str()).await;
            coordinators.push(coordinator(key.to_string(), result));
        }
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let result = locate(cluster, request.key_type, request.key.as_str()).await;
    let found = coordinator(request.key.to_string(), result);
    FindCoordinatorResponse::default()
        .with_error_code(found.error_code)
        .with_error_message(found.error_message)
        .with_node_id(found.node_id)
        .with_host(found.host)
        .with_port(found.port)
}

/// `(node id, host, port)` of the coordinator for `key`.
async fn locate(cluster: &Cluster, key_type: i8, key: &str) -> Result<(i32, String, i32), BrokerError> {
    match key_type {
        KEY_TYPE_GROUP => {}
        KEY_TYPE_TRANSACTION => {
            return Err(BrokerError::CoordinatorNotAvailable(
                "transactions are not supported".into(),
            ))
        }
        other => {
            return Err(BrokerError::InvalidRequest(format!(
                "coordinator key type {other} is not supported (share groups are not)"
            )))
        }
    }
    if key.is_empty() {
        return Err(BrokerError::InvalidGroupId);
    }
    let leader = cluster.coordinator_of(key).await?;
    cluster
        .brokers()
        .into_iter()
        .find(|(id, _, _)| *id == leader)
        .map(|(id, host, port)| (id as i32, host, port))
        .ok_or_else(|| BrokerError::CoordinatorNotAvailable(format!("node {leader} has no address")))
}

fn coordinator(key: String, result: Result<(i32, String, i32), BrokerError>) -> Coordinator {
    let (node, host, port) = result.as_ref().cloned().unwrap_or((-1, String::new(), -1));
    Coordinator::default()
        .with_key(str_bytes(key))
        .with_node_id(BrokerId(node))
        .with_host(str_bytes(host))
        .with_port(port)
        .with_error_code(code_of(&result))
        .with_error_message(error_message(&result))
}
