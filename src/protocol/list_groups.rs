//! ListGroups: the groups this coordinator knows, optionally filtered by state
//! (v4+) and by type (v5+, KIP-848). Every group here is a classic group.

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::{StrBytes, VersionRange};

use super::str_bytes;
use crate::group::coordinator::GroupCoordinator;

/// The type of every group here: Kafka's classic protocol (JoinGroup/SyncGroup).
const CLASSIC: &str = "classic";

pub const VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };

pub async fn handle(groups: &GroupCoordinator, request: ListGroupsRequest) -> ListGroupsResponse {
    let listed = match groups.list().await {
        Ok(listed) => listed,
        Err(err) => return ListGroupsResponse::default().with_error_code(err.code()),
    };
    let wanted = |state: &str| {
        request.states_filter.is_empty()
            || request
                .states_filter
                .iter()
                .any(|s| s.as_str().eq_ignore_ascii_case(state))
    };
    let classic_wanted = classic_wanted(&request.types_filter);
    let groups = listed
        .into_iter()
        .filter(|(_, _, state)| classic_wanted && wanted(state))
        .map(|(name, protocol_type, state)| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(name)))
                .with_protocol_type(str_bytes(protocol_type))
                .with_group_state(str_bytes(state))
                .with_group_type(str_bytes(CLASSIC))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

/// Whether a v5 type filter lets classic groups through: an empty filter
/// lets every type through and, as in Kafka, a type it does not know
/// matches no group.
fn classic_wanted(types_filter: &[StrBytes]) -> bool {
    types_filter.is_empty() || types_filter.iter().any(|t| t.as_str().eq_ignore_ascii_case(CLASSIC))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_type_filter_lets_classic_groups_through_only_when_it_names_them() {
        let filter =
            |types: &[&'static str]| -> Vec<StrBytes> { types.iter().map(|t| StrBytes::from_static_str(t)).collect() };
        assert!(classic_wanted(&[]));
        assert!(classic_wanted(&filter(&["Classic"])));
        assert!(classic_wanted(&filter(&["consumer", "classic"])));
        assert!(!classic_wanted(&filter(&["consumer"])));
        assert!(!classic_wanted(&filter(&["share", "unknown"])));
    }
}
