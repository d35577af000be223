//! Heartbeat: keeps a member's session alive and tells it when to rejoin.

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};
use kafka_protocol::protocol::VersionRange;

use crate::error::code_of;
use crate::group::coordinator::GroupCoordinator;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 4 };

pub async fn handle(groups: &GroupCoordinator, request: HeartbeatRequest) -> HeartbeatResponse {
    let result = groups
        .heartbeat(
            request.group_id.0.as_str(),
            request.generation_id,
            request.member_id.as_str(),
            request.group_instance_id.as_deref(),
        )
        .await;
    HeartbeatResponse::default().with_error_code(code_of(&result))
}
