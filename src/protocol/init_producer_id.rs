//! InitProducerId: ids for idempotent producers (transactions are not supported).
//! v5 only adds TRANSACTION_ABORTABLE (KIP-890), a transactional error.

use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::protocol::VersionRange;

use crate::cluster::Cluster;
use crate::error::BrokerError;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

pub async fn handle(cluster: &Cluster, request: InitProducerIdRequest) -> InitProducerIdResponse {
    let result = if request.transactional_id.is_some() {
        Err(BrokerError::TransactionsUnsupported)
    } else if request.producer_id.0 >= 0 && request.producer_epoch >= 0 {
        // KIP-360: an idempotent producer bumps its own epoch to reset sequences.
        match request.producer_epoch.checked_add(1) {
            Some(epoch) => Ok((request.producer_id.0, epoch)),
            None => cluster.allocate_producer_id().await.map(|id| (id, 0)),
        }
    } else {
        cluster.allocate_producer_id().await.map(|id| (id, 0))
    };
    match result {
        Ok((id, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(epoch),
        Err(err) => InitProducerIdResponse::default()
            .with_error_code(err.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    }
}
