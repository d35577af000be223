//! DescribeGroups: state, protocol and members with their assignments.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::VersionRange;

use super::{error_message, str_bytes};
use crate::error::code_of;
use crate::group::coordinator::GroupCoordinator;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

pub async fn handle(groups: &GroupCoordinator, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let mut described = Vec::with_capacity(request.groups.len());
    for group_id in request.groups {
        let result = groups.describe(group_id.0.as_str()).await;
        let mut group = DescribedGroup::default()
            .with_group_id(group_id)
            .with_error_code(code_of(&result))
            .with_error_message(error_message(&result));
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
