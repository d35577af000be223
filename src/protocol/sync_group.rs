//! SyncGroup: the leader hands in the assignments; every member gets its own.

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::VersionRange;

use super::str_bytes;
use crate::group::coordinator::GroupCoordinator;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

pub async fn handle(groups: &std::sync::Arc<GroupCoordinator>, request: SyncGroupRequest) -> SyncGroupResponse {
    let assignments = request
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let result = groups
        .sync(
            request.group_id.0.as_str(),
            request.generation_id,
            request.member_id.as_str(),
            request.group_instance_id.as_deref(),
            assignments,
        )
        .await;
    match result {
        Ok((protocol_type, protocol, assignment)) => SyncGroupResponse::default()
            .with_protocol_type(Some(str_bytes(protocol_type)))
            .with_protocol_name(Some(str_bytes(protocol)))
            .with_assignment(assignment),
        Err(err) => SyncGroupResponse::default().with_error_code(err.code()),
    }
}
