//! openraft's storage conformance suite (`openraft::testing::Suite`) against
//! the log store and state machine every group runs on, with the controller's
//! state: real RocksDB and segment files in a temporary directory per test.
//!
//! Eight of the suite's 35 tests are left out on purpose. They read a range
//! that starts below the first entry the store holds, after a purge
//! (`purge_logs_upto_0`, `_5`, `_20`, `append_to_log`, `try_get_log_entry`)
//! or over a log fed from index 1 without the initial entry 0 openraft always
//! writes (`last_membership_in_log`, `last_membership_in_log_multi_step`,
//! `get_membership_from_log_and_empty_sm`), and expect the entries it still
//! holds back. This log store refuses any range that starts in what it does
//! not hold, so that a leader sends a snapshot instead of streaming a follower
//! entries that follow nothing (see `GroupLogStore::try_get_log_entries`); its
//! own tests cover purging and reading.

use std::sync::Arc;
use std::time::Duration;

use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;
use tokio::sync::watch;

use super::controller_state::ControllerState;
use super::metadata::ClusterState;
use crate::raft::log_store::GroupLogStore;
use crate::raft::state_machine::GroupStateMachine;
use crate::raft::{RaftStorageError, TypeConfig, CONTROLLER_GROUP};
use crate::storage::segments::RollPolicy;
use crate::storage::Store;

struct Builder;

impl StoreBuilder<TypeConfig, GroupLogStore, GroupStateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, GroupLogStore, GroupStateMachine), RaftStorageError> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::open(dir.path()).expect("a store");
        let roll = RollPolicy {
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(3600),
        };
        let log = GroupLogStore::open(CONTROLLER_GROUP, store.clone(), dir.path(), roll).expect("a log");
        let (published, _) = watch::channel(Arc::new(ClusterState::default()));
        let machine = GroupStateMachine::open(
            CONTROLLER_GROUP,
            store,
            Box::new(ControllerState::new(published)),
            &dir.path().join("snapshots"),
            log.segments(),
        )
        .expect("a state machine");
        Ok((dir, log, machine))
    }
}

type Conformance = Suite<TypeConfig, GroupLogStore, GroupStateMachine, Builder, TempDir>;

macro_rules! conformance {
    ($($test:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let (_dir, log, machine) = Builder.build().await.unwrap();
                Conformance::$test(log, machine).await.unwrap();
            }
        )+
    };
}

conformance!(
    last_membership_in_log_initial,
    get_membership_initial,
    get_membership_from_empty_log_and_sm,
    get_membership_from_log_le_sm_last_applied,
    get_membership_from_log_gt_sm_last_applied_1,
    get_membership_from_log_gt_sm_last_applied_2,
    get_initial_state_without_init,
    get_initial_state_membership_from_log_and_sm,
    get_initial_state_with_state,
    get_initial_state_last_log_gt_sm,
    get_initial_state_last_log_lt_sm,
    get_initial_state_log_ids,
    get_initial_state_re_apply_committed,
    save_vote,
    get_log_entries,
    limited_get_log_entries,
    initial_logs,
    get_log_state,
    get_log_id,
    last_id_in_log,
    last_applied_state,
    delete_logs_since_11,
    delete_logs_since_0,
    snapshot_meta,
    apply_single,
    apply_multiple,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_snapshot() {
    Conformance::transfer_snapshot(&Builder).await.unwrap();
}
