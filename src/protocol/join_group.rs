//! JoinGroup: waits until the group's rebalance completes, then answers with
//! the generation, the chosen protocol and (for the leader) every member.
//! v8 adds the client's reason for joining (KIP-800), logged.
//!
//! v9 is left out: its response adds `SkipAssignment` (KIP-814), with which
//! Kafka tells a static leader that rejoins a stable group that it is still
//! the leader but must not run the assignor. The coordinator answers such a
//! rejoin the way Kafka answers versions before 9 (the old leader id, so the
//! member does not take itself for the leader), and a v9 client would be told
//! it is no leader where Kafka would tell it it is one.

use std::net::SocketAddr;

use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::protocol::VersionRange;

use super::str_bytes;
use crate::error::BrokerError;
use crate::group::coordinator::{GroupCoordinator, JoinRequest};

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 8 };

/// KIP-394: from v4 a new member first gets its id with MEMBER_ID_REQUIRED.
const MEMBER_ID_REQUIRED_SINCE: i16 = 4;

pub async fn handle(
    groups: &std::sync::Arc<GroupCoordinator>,
    version: i16,
    client_id: String,
    peer: SocketAddr,
    request: JoinGroupRequest,
) -> JoinGroupResponse {
    if let Some(reason) = &request.reason {
        tracing::debug!(group = %request.group_id.0, member = %request.member_id, %reason, "joining");
    }
    let join = JoinRequest {
        group_id: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.map(|id| id.to_string()),
        client_id,
        client_host: format!("/{}", peer.ip()),
        session_timeout_ms: request.session_timeout_ms,
        // v0 had no rebalance timeout: the session timeout served both.
        rebalance_timeout_ms: if version == 0 {
            request.session_timeout_ms
        } else {
            request.rebalance_timeout_ms
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= MEMBER_ID_REQUIRED_SINCE,
    };
    let response = JoinGroupResponse::default()
        .with_generation_id(-1)
        .with_protocol_name(Some(str_bytes("")));
    match groups.join(join).await {
        Ok(joined) => {
            let members = joined
                .members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(id))
                        .with_group_instance_id(instance.map(str_bytes))
                        .with_metadata(metadata)
                })
                .collect();
            response
                .with_generation_id(joined.generation)
                .with_protocol_type(Some(str_bytes(joined.protocol_type)))
                .with_protocol_name(Some(str_bytes(joined.protocol)))
                .with_leader(str_bytes(joined.leader))
                .with_member_id(str_bytes(joined.member_id))
                .with_members(members)
        }
        Err(BrokerError::MemberIdRequired(member_id)) => response
            .with_error_code(BrokerError::MemberIdRequired(String::new()).code())
            .with_member_id(str_bytes(member_id)),
        Err(err) => {
            tracing::debug!(error = %err, "join refused");
            response.with_error_code(err.code())
        }
    }
}
