//! LeaveGroup: one member (v0-2) or a batch of members (v3+) leave at once;
//! from v3 a static member may be named by its instance id alone; from v5
//! each member gives its reason (KIP-800), which is logged.

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};
use kafka_protocol::protocol::VersionRange;

use super::str_bytes;
use crate::error::code_of;
use crate::group::coordinator::GroupCoordinator;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

const BATCHED_SINCE: i16 = 3;

pub async fn handle(
    groups: &std::sync::Arc<GroupCoordinator>,
    version: i16,
    request: LeaveGroupRequest,
) -> LeaveGroupResponse {
    for member in &request.members {
        if let Some(reason) = &member.reason {
            tracing::info!(group = %request.group_id.0, member = %member.member_id, %reason, "member leaving");
        }
    }
    let leaving: Vec<(String, Option<String>)> = if version >= BATCHED_SINCE {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|id| id.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    match groups.leave(request.group_id.0.as_str(), &leaving).await {
        Err(err) => LeaveGroupResponse::default().with_error_code(err.code()),
        Ok(results) if version < BATCHED_SINCE => {
            LeaveGroupResponse::default().with_error_code(results.first().map_or(0, code_of))
        }
        Ok(results) => {
            let members = leaving
                .into_iter()
                .zip(results.iter())
                .map(|((id, instance), result)| {
                    MemberResponse::default()
                        .with_member_id(str_bytes(id))
                        .with_group_instance_id(instance.map(str_bytes))
                        .with_error_code(code_of(result))
                })
                .collect();
            LeaveGroupResponse::default().with_members(members)
        }
    }
}
