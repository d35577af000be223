//! Consumer groups (the classic protocol). Membership and rebalances live in
//! memory on the coordinator ([`coordinator`]); committed offsets and group
//! generations are replicated through the `__consumer_offsets` partitions
//! ([`store`], applied by [`offsets_state`]), so they survive restarts and fail
//! over with Raft leadership. Every change is also Kafka's own records of
//! that partition ([`records`]), which any client can read.

pub mod coordinator;
pub mod offsets_state;
pub mod records;
pub mod store;
