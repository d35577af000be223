//! DescribeGroups: state, protocol and members with their assignments. From
//! v6 a group this coordinator does not know is GROUP_ID_NOT_FOUND with a
//! message (KIP-1043); older versions describe it as an empty "Dead" group.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::VersionRange;

use super::{error_message, str_bytes};
use crate::error::{code_of, BrokerError};
use crate::group::coordinator::GroupCoordinator;

/// The state of a group the coordinator does not know.
pub(crate) const DEAD: &str = "Dead";

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 6 };

/// The first version that reports an unknown group as an error.
const FIRST_NOT_FOUND_VERSION: i16 = 6;

pub async fn handle(groups: &GroupCoordinator, version: i16, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let mut described = Vec::with_capacity(request.groups.len());
    for group_id in request.groups {
        let result = groups
            .describe(group_id.0.as_str())
            .await
            .and_then(|description| match description.state {
                DEAD if version >= FIRST_NOT_FOUND_VERSION => Err(BrokerError::GroupIdNotFound),
                _ => Ok(description),
            });
        let mut group = DescribedGroup::default()
            .with_group_id(group_id)
            .with_error_code(code_of(&result))
            .with_error_message(error_message(&result));
        if let Err(BrokerError::GroupIdNotFound) = result {
            group = group.with_group_state(str_bytes(DEAD));
        }
        if let Ok(description) = result {
            let members = description
                .members
                .into_iter()
                .map(|m| {
                    DescribedGroupMember::default()
                        .with_member_id(str_bytes(m.member_id))
                        .with_group_instance_id(m.group_instance_id.map(str_bytes))
                        .with_client_id(str_bytes(m.client_id))
                        .with_client_host(str_bytes(m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment)
                })
                .collect();
            group = group
                .with_group_state(str_bytes(description.state))
                .with_protocol_type(str_bytes(description.protocol_type))
                .with_protocol_data(str_bytes(description.protocol))
                .with_members(members);
        }
        described.push(group);
    }
    DescribeGroupsResponse::default().with_groups(described)
}
