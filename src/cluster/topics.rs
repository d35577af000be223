//! Topic rules shared by every admin path.

use crate::error::BrokerError;
use crate::raft::NodeId;

/// Kafka's limit, so that names fit in file and metric names everywhere.
const MAX_TOPIC_NAME_LEN: usize = 249;
/// The most partitions a topic may have. Each is a Raft group on every replica,
/// and the bound also keeps a forged controller command from making every node
/// allocate without limit when it is applied.
pub const MAX_PARTITIONS: usize = 10_000;

pub fn validate_topic_name(name: &str) -> Result<(), BrokerError> {
    let invalid = |why: &str| Err(BrokerError::InvalidTopic(format!("{name:?} {why}")));
    if name.is_empty() || name == "." || name == ".." {
        return invalid("is not a valid name");
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return invalid("is longer than 249 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return invalid("may only contain ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Replica lists for `count` partitions starting at partition `first`: consecutive
/// nodes, rotated by partition index so that leaders (the first replica is the
/// preferred bootstrapper) spread evenly across nodes.
pub fn place_replicas(nodes: &[NodeId], first: usize, count: usize, replication_factor: usize) -> Vec<Vec<NodeId>> {
    (first..first + count)
        .map(|partition| {
            (0..replication_factor)
                .map(|i| nodes[(partition + i) % nodes.len()])
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kafka_names_and_rejects_the_rest() {
        for ok in ["orders", "a.b_c-D9", &"x".repeat(249)] {
            assert!(validate_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "bad topic!", "naïve", "a/b", &"x".repeat(250)] {
            assert!(
                matches!(validate_topic_name(bad), Err(BrokerError::InvalidTopic(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn spreads_replicas_across_nodes() {
        assert_eq!(
            place_replicas(&[1, 2, 3], 0, 3, 2),
            vec![vec![1, 2], vec![2, 3], vec![3, 1]]
        );
        assert_eq!(place_replicas(&[1], 2, 2, 1), vec![vec![1], vec![1]]);
    }
}
