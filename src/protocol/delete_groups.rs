//! DeleteGroups: removes empty groups and their committed offsets.

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};
use kafka_protocol::protocol::VersionRange;

use crate::error::code_of;
use crate::group::coordinator::GroupCoordinator;

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

pub async fn handle(groups: &GroupCoordinator, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(request.groups_names.len());
    for group_id in request.groups_names {
        let result = groups.delete_group(group_id.0.as_str()).await;
        results.push(
            DeletableGroupResult::default()
                .with_group_id(group_id)
                .with_error_code(code_of(&result)),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
