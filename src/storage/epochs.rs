//! A partition's leader epochs: which epoch each of its offsets was appended
//! in, as Kafka's leader epoch cache keeps it.
//!
//! Epochs are assigned as the partition's entries are applied, in log order,
//! so every replica holds the same history: each new leader starts the next
//! epoch at the partition's end offset before its first entry. An epoch whose
//! leader appended nothing is replaced by the next one (it owns no offsets),
//! so the history keeps one entry per epoch that holds records plus the
//! current one.

use serde::{Deserialize, Serialize};

/// Kafka's "no epoch": the request asks for no check, or nothing is known.
pub const NO_EPOCH: i32 = -1;
/// Kafka's "no offset" for an epoch it cannot place.
pub const NO_OFFSET: i64 = -1;

/// One epoch and the first offset appended in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochStart {
    pub epoch: i32,
    pub start_offset: i64,
}

/// The epoch history, oldest first; epochs and start offsets both increase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderEpochs {
    entries: Vec<EpochStart>,
}

impl LeaderEpochs {
    /// The current epoch: the newest leader's; [`NO_EPOCH`] before the first.
    pub fn current(&self) -> i32 {
        self.entries.last().map_or(NO_EPOCH, |entry| entry.epoch)
    }

    pub fn entries(&self) -> &[EpochStart] {
        &self.entries
    }

    /// A new leader starts the next epoch at `end_offset`, the partition's end
    /// offset before its first entry. Returns the new epoch.
    pub fn begin(&mut self, end_offset: i64) -> i32 {
        let epoch = self.current().saturating_add(1);
        if self.entries.last().is_some_and(|last| last.start_offset >= end_offset) {
            self.entries.pop();
        }
        self.entries.push(EpochStart {
            epoch,
            start_offset: end_offset,
        });
        epoch
    }

    /// The epoch `offset` was appended in; [`NO_EPOCH`] for an offset appended
    /// before the partition kept epochs.
    pub fn epoch_at(&self, offset: i64) -> i32 {
        self.entries
            .iter()
            .rev()
            .find(|entry| entry.start_offset <= offset)
            .map_or(NO_EPOCH, |entry| entry.epoch)
    }

    /// OffsetForLeaderEpoch: the largest epoch at most `requested`, and the
    /// offset where it ended (the start of the next larger epoch, or `log_end`
    /// for the current epoch), as Kafka's `LeaderEpochFileCache.endOffsetFor`
    /// answers. An epoch below the history (its records were deleted, or it
    /// predates the history) is answered with itself and the start of the
    /// oldest epoch kept, so a client positioned past that start sees that its
    /// records are gone; an unknown or larger epoch gets
    /// ([`NO_EPOCH`], [`NO_OFFSET`]).
    pub fn end_offset_for(&self, requested: i32, log_end: i64) -> (i32, i64) {
        if requested == NO_EPOCH {
            return (NO_EPOCH, NO_OFFSET);
        }
        if requested == self.current() {
            return (requested, log_end);
        }
        let Some(higher) = self.entries.iter().find(|entry| entry.epoch > requested) else {
            return (NO_EPOCH, NO_OFFSET);
        };
        match self.entries.iter().rev().find(|entry| entry.epoch <= requested) {
            Some(floor) => (floor.epoch, higher.start_offset),
            None => (requested, higher.start_offset),
        }
    }

    /// Forgets the epochs wholly below `log_start`; the epoch holding it now
    /// starts there (Kafka's `truncateFromStart`).
    pub fn truncate_from_start(&mut self, log_start: i64) {
        let Some(holder) = self.entries.iter().rposition(|entry| entry.start_offset <= log_start) else {
            return;
        };
        self.entries.drain(..holder);
        self.entries[0].start_offset = log_start;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Epoch 0 wrote 0..10, epoch 1 nothing, epoch 2 wrote 10..25, epoch 3 is current.
    fn history() -> LeaderEpochs {
        let mut epochs = LeaderEpochs::default();
        assert_eq!(epochs.current(), NO_EPOCH);
        assert_eq!(epochs.begin(0), 0);
        assert_eq!(epochs.begin(10), 1);
        assert_eq!(epochs.begin(10), 2, "epoch 1 appended nothing");
        assert_eq!(epochs.begin(25), 3);
        epochs
    }

    fn entry(epoch: i32, start_offset: i64) -> EpochStart {
        EpochStart { epoch, start_offset }
    }

    #[test]
    fn each_leader_gets_the_next_epoch_and_empty_epochs_are_replaced() {
        let epochs = history();
        assert_eq!(epochs.current(), 3);
        assert_eq!(epochs.entries(), &[entry(0, 0), entry(2, 10), entry(3, 25)]);
        assert_eq!(
            [0, 9, 10, 24, 25, 99].map(|offset| epochs.epoch_at(offset)),
            [0, 0, 2, 2, 3, 3]
        );
    }

    #[test]
    fn end_offsets_follow_kafkas_rules() {
        let epochs = history();
        let log_end = 31;
        assert_eq!(epochs.end_offset_for(3, log_end), (3, 31), "current: the log end");
        assert_eq!(epochs.end_offset_for(2, log_end), (2, 25));
        assert_eq!(
            epochs.end_offset_for(1, log_end),
            (0, 10),
            "the largest epoch at most 1"
        );
        assert_eq!(epochs.end_offset_for(0, log_end), (0, 10));
        assert_eq!(
            epochs.end_offset_for(4, log_end),
            (NO_EPOCH, NO_OFFSET),
            "newer than ours"
        );
        assert_eq!(epochs.end_offset_for(NO_EPOCH, log_end), (NO_EPOCH, NO_OFFSET));
        assert_eq!(
            LeaderEpochs::default().end_offset_for(0, 0),
            (NO_EPOCH, NO_OFFSET),
            "no history"
        );
    }

    #[test]
    fn truncation_from_the_start_keeps_the_epoch_holding_the_log_start() {
        let mut epochs = history();
        epochs.truncate_from_start(5);
        assert_eq!(epochs.entries(), &[entry(0, 5), entry(2, 10), entry(3, 25)]);
        epochs.truncate_from_start(12);
        assert_eq!(epochs.entries(), &[entry(2, 12), entry(3, 25)]);
        assert_eq!(
            epochs.end_offset_for(0, 31),
            (0, 12),
            "below the history: the requested epoch and where the kept records start"
        );
        epochs.truncate_from_start(31);
        assert_eq!(epochs.entries(), &[entry(3, 31)]);
        assert_eq!(epochs.epoch_at(30), NO_EPOCH);
        let mut empty = LeaderEpochs::default();
        empty.truncate_from_start(3);
        assert_eq!(empty, LeaderEpochs::default());
    }
}
