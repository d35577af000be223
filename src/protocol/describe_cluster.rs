//! DescribeCluster: the brokers and the controller, for admin clients. v1
//! asks for brokers' or controllers' endpoints (KIP-919): every node here
//! serves clients as a broker, and its controller role has no endpoint of its
//! own, so only brokers can be described. v2 may ask for fenced brokers too
//! (KIP-1073); this cluster fences none (a silent node drops out of the list
//! instead), so every broker is reported unfenced.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::VersionRange;

use super::{error_message, str_bytes};
use crate::cluster::Cluster;
use crate::error::{code_of, BrokerError};

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

const ENDPOINT_BROKER: i8 = 1;
const ENDPOINT_CONTROLLER: i8 = 2;

pub fn handle(cluster: &Cluster, version: i16, request: DescribeClusterRequest) -> DescribeClusterResponse {
    let checked = check_endpoint_type(version, request.endpoint_type);
    if checked.is_err() {
        return DescribeClusterResponse::default()
            .with_error_code(code_of(&checked))
            .with_error_message(error_message(&checked))
            .with_endpoint_type(request.endpoint_type);
    }
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

/// Kafka's answer to an endpoint type other than brokers': v0 requests can
/// carry only INVALID_REQUEST; v1+ tell an unknown type from a controller one.
fn check_endpoint_type(version: i16, endpoint_type: i8) -> Result<(), BrokerError> {
    let refusal = match endpoint_type {
        ENDPOINT_BROKER => return Ok(()),
        ENDPOINT_CONTROLLER => BrokerError::MismatchedEndpointType,
        other => BrokerError::UnsupportedEndpointType(other),
    };
    if version == 0 {
        return Err(BrokerError::InvalidRequest(refusal.to_string()));
    }
    Err(refusal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_broker_endpoints_are_described() {
        assert!(check_endpoint_type(2, ENDPOINT_BROKER).is_ok());
        assert_eq!(code_of(&check_endpoint_type(1, ENDPOINT_CONTROLLER)), 114);
        assert_eq!(code_of(&check_endpoint_type(2, 7)), 115);
        assert_eq!(code_of(&check_endpoint_type(0, ENDPOINT_CONTROLLER)), 42);
    }
}
