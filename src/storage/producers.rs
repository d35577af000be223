//! Idempotent producers: per partition, each producer's epoch and its last
//! batches, so that a retried batch is answered with its original offset and
//! a gap or a fenced epoch is refused. The state is applied with the records
//! it guards, so it is replicated and survives restarts with them.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::batch::ValidatedBatch;
use crate::raft::command::ProduceRefusal;

/// Kafka keeps the last five batches per producer: a client has at most five in flight.
const REMEMBERED_BATCHES: usize = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentBatch {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProducerState {
    pub epoch: i16,
    pub recent: VecDeque<RecentBatch>,
    /// The largest timestamp of its batches: it expires that long after.
    pub last_timestamp: i64,
}

pub type Producers = BTreeMap<i64, ProducerState>;

#[derive(Debug, PartialEq)]
pub enum SequenceCheck {
    /// Not idempotent, or the next batch in sequence: append it.
    Append,
    /// Already appended at this base offset: answer without appending.
    Duplicate(i64),
    Refused(ProduceRefusal),
}

fn next_sequence(last: i32) -> i32 {
    if last == i32::MAX {
        0
    } else {
        last + 1
    }
}

pub fn check(state: Option<&ProducerState>, batch: &ValidatedBatch) -> SequenceCheck {
    if batch.producer_id < 0 {
        return SequenceCheck::Append;
    }
    let Some(state) = state else {
        // A producer this partition does not know may be one it forgot
        // (expired, or its batches fell below the log start) that goes on
        // writing: Kafka accepts it at any sequence (KIP-360) rather than fail
        // a producer whose state the broker dropped.
        return SequenceCheck::Append;
    };
    if batch.producer_epoch < state.epoch {
        return SequenceCheck::Refused(ProduceRefusal::InvalidProducerEpoch);
    }
    if batch.producer_epoch > state.epoch {
        return if batch.base_sequence == 0 {
            SequenceCheck::Append
        } else {
            SequenceCheck::Refused(ProduceRefusal::OutOfOrderSequence)
        };
    }
    if let Some(seen) = state
        .recent
        .iter()
        .find(|b| b.first_sequence == batch.base_sequence && b.last_sequence == batch.last_sequence())
    {
        return SequenceCheck::Duplicate(seen.base_offset);
    }
    match state.recent.back() {
        Some(last) if batch.base_sequence == next_sequence(last.last_sequence) => SequenceCheck::Append,
        None if batch.base_sequence == 0 => SequenceCheck::Append,
        _ => SequenceCheck::Refused(ProduceRefusal::OutOfOrderSequence),
    }
}

/// Records an appended batch of an idempotent producer.
pub fn record(state: &mut ProducerState, batch: &ValidatedBatch, base_offset: i64) {
    if batch.producer_epoch != state.epoch {
        state.epoch = batch.producer_epoch;
        state.recent.clear();
    }
    state.recent.push_back(RecentBatch {
        first_sequence: batch.base_sequence,
        last_sequence: batch.last_sequence(),
        base_offset,
    });
    while state.recent.len() > REMEMBERED_BATCHES {
        state.recent.pop_front();
    }
    state.last_timestamp = state.last_timestamp.max(batch.max_timestamp);
}

/// The producers whose last batch is older than `before` (Kafka's
/// `producer.id.expiration.ms` measured back from now).
pub fn expired(producers: &Producers, before: i64) -> Vec<i64> {
    producers
        .iter()
        .filter(|(_, state)| state.last_timestamp < before)
        .map(|(id, _)| *id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn batch(epoch: i16, base_sequence: i32, count: i64) -> ValidatedBatch {
        ValidatedBatch {
            bytes: Bytes::new(),
            record_count: count,
            max_timestamp: 0,
            producer_id: 7,
            producer_epoch: epoch,
            base_sequence,
        }
    }

    #[test]
    fn sequences_chain_duplicates_repeat_and_gaps_fail() {
        let mut state = ProducerState::default();
        assert_eq!(check(None, &batch(0, 0, 3)), SequenceCheck::Append);
        assert_eq!(
            check(None, &batch(0, 5, 3)),
            SequenceCheck::Append,
            "a producer the partition forgot goes on where it was"
        );
        record(&mut state, &batch(0, 0, 3), 100);
        assert_eq!(check(Some(&state), &batch(0, 3, 2)), SequenceCheck::Append);
        record(&mut state, &batch(0, 3, 2), 103);
        assert_eq!(check(Some(&state), &batch(0, 0, 3)), SequenceCheck::Duplicate(100));
        assert_eq!(check(Some(&state), &batch(0, 3, 2)), SequenceCheck::Duplicate(103));
        assert_eq!(
            check(Some(&state), &batch(0, 9, 1)),
            SequenceCheck::Refused(ProduceRefusal::OutOfOrderSequence)
        );
    }

    #[test]
    fn epochs_fence_old_producers_and_restart_sequences() {
        let mut state = ProducerState::default();
        record(&mut state, &batch(2, 0, 1), 0);
        assert_eq!(
            check(Some(&state), &batch(1, 1, 1)),
            SequenceCheck::Refused(ProduceRefusal::InvalidProducerEpoch)
        );
        assert_eq!(check(Some(&state), &batch(3, 0, 1)), SequenceCheck::Append);
        assert_eq!(
            check(Some(&state), &batch(3, 4, 1)),
            SequenceCheck::Refused(ProduceRefusal::OutOfOrderSequence)
        );
        record(&mut state, &batch(3, 0, 1), 1);
        assert_eq!(state.recent.len(), 1);
        for i in 1..10 {
            record(&mut state, &batch(3, i, 1), i64::from(i) + 1);
        }
        assert_eq!(state.recent.len(), REMEMBERED_BATCHES);
    }

    #[test]
    fn sequences_wrap_at_the_top() {
        let mut state = ProducerState::default();
        record(&mut state, &batch(0, i32::MAX - 1, 2), 0);
        assert_eq!(check(Some(&state), &batch(0, 0, 1)), SequenceCheck::Append);
    }

    #[test]
    fn plain_producers_are_not_tracked() {
        let mut plain = batch(0, 9, 1);
        plain.producer_id = -1;
        assert_eq!(check(None, &plain), SequenceCheck::Append);
    }
}
