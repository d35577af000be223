//! RocksDB storage: one database per node shared by every Raft group.

pub mod batch;
pub mod decompress;
pub mod keys;
pub mod partition;
pub mod producers;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt data in group {group}: {what}")]
    Corrupt { group: u64, what: String },
    #[error("encoding: {0}")]
    Encoding(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl From<bincode::Error> for StorageError {
    fn from(err: bincode::Error) -> Self {
        StorageError::Encoding(err.to_string())
    }
}

/// Memory all column families' memtables may use before RocksDB flushes the largest.
const MEMTABLE_BUDGET_BYTES: usize = 128 << 20;

/// A raw key and value read from RocksDB.
pub type KeyValue = (Box<[u8]>, Box<[u8]>);

/// RocksDB's own gauges: is it holding writes back, how much work is pending,
/// and how large each column family is.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub write_stopped: bool,
    /// Bytes per second RocksDB lets writes through while it delays them; 0 when it does not.
    pub delayed_write_rate: u64,
    pub pending_compaction_bytes: u64,
    pub running_flushes: u64,
    pub running_compactions: u64,
    /// `(column family, SST file bytes, memtable bytes)`.
    pub column_families: Vec<(&'static str, u64, u64)>,
}

/// The node's database. Cloning is cheap; all clones share one RocksDB instance.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // One cap for the memtables of every column family: RocksDB's default of
        // 64 MiB twice per family let one node reach half a gigabyte under load.
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET_BYTES);
        // Every column family shares the WAL, so a synced Raft log write also makes
        // the state machine's earlier unsynced writes durable.
        let descriptors = keys::ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir.join("db"), descriptors)?;
        Ok(Store { db: Arc::new(db) })
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    pub fn cf(&self, name: &str) -> &ColumnFamily {
        // The column families are created at open; a missing one is a programming error.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} is created at open"))
    }

    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    /// Writes `batch` and waits until it is on disk (fsync of the WAL).
    pub fn write_durable(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        Ok(self.db.write_opt(batch, &opts)?)
    }

    /// Writes `batch` through the WAL without waiting for fsync: state that can be
    /// rebuilt from the durable Raft log after a crash.
    pub fn write_buffered(&self, batch: WriteBatch) -> Result<(), StorageError> {
        Ok(self.db.write(batch)?)
    }

    /// RocksDB's gauges, read from its properties (cheap: no I/O).
    pub fn stats(&self) -> Result<StoreStats, StorageError> {
        let db = &self.db;
        let int = |name: &str| -> Result<u64, StorageError> { Ok(db.property_int_value(name)?.unwrap_or(0)) };
        let mut stats = StoreStats {
            write_stopped: int("rocksdb.is-write-stopped")? != 0,
            delayed_write_rate: int("rocksdb.actual-delayed-write-rate")?,
            pending_compaction_bytes: int("rocksdb.estimate-pending-compaction-bytes")?,
            running_flushes: int("rocksdb.num-running-flushes")?,
            running_compactions: int("rocksdb.num-running-compactions")?,
            column_families: Vec::new(),
        };
        for name in keys::ALL_CFS {
            let cf = self.cf(name);
            let sst = db.property_int_value_cf(&cf, "rocksdb.total-sst-files-size")?;
            let memtables = db.property_int_value_cf(&cf, "rocksdb.cur-size-all-mem-tables")?;
            stats
                .column_families
                .push((name, sst.unwrap_or(0), memtables.unwrap_or(0)));
        }
        Ok(stats)
    }

    /// Adds deletes of every key of `group` in the column families `cfs` to `batch`.
    pub fn delete_group_in(&self, batch: &mut WriteBatch, group: u64, cfs: &[&str]) {
        let (start, end) = keys::group_range(group);
        for cf in cfs {
            batch.delete_range_cf(self.cf(cf), &start, &end);
        }
    }

    /// Whether this node ever held Raft state (a vote or a log entry) for `group`.
    pub fn has_raft_state(&self, group: u64) -> Result<bool, StorageError> {
        for cf in [keys::CF_RAFT_LOG, keys::CF_RAFT_STATE] {
            if self
                .scan_group(cf, group, &group.to_be_bytes())
                .next()
                .transpose()?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// CRC-32 over every state-machine key and value of `group`, in key order, and
    /// the number of stored record batches: equal on replicas that applied the same entries.
    pub fn checksum_group(&self, group: u64) -> Result<(u32, u64), StorageError> {
        let mut hasher = crc32fast::Hasher::new();
        let mut batches = 0;
        for cf in keys::STATE_MACHINE_CFS {
            for item in self.scan_group(cf, group, &group.to_be_bytes()) {
                let (key, value) = item?;
                hasher.update(&key);
                hasher.update(&value);
                batches += u64::from(cf == keys::CF_RECORDS);
            }
        }
        Ok((hasher.finalize(), batches))
    }

    /// Iterates `(key, value)` of `group` in `cf` from `from` (inclusive) upwards.
    pub fn scan_group<'a>(
        &'a self,
        cf: &str,
        group: u64,
        from: &[u8],
    ) -> impl Iterator<Item = Result<KeyValue, StorageError>> + 'a {
        let (_, end) = keys::group_range(group);
        let mut read_opts = rocksdb::ReadOptions::default();
        read_opts.set_iterate_upper_bound(end);
        self.db
            .iterator_cf_opt(
                self.cf(cf),
                read_opts,
                rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward),
            )
            .map(|item| item.map_err(StorageError::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_report_every_column_family_and_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut write = WriteBatch::default();
        write.put_cf(store.cf(keys::CF_RECORDS), keys::group_u64_key(1, 0), vec![7u8; 4096]);
        store.write_durable(write).unwrap();
        let stats = store.stats().unwrap();
        assert!(!stats.write_stopped);
        let names: Vec<&str> = stats.column_families.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(names, keys::ALL_CFS);
        let (_, sst, memtables) = stats
            .column_families
            .iter()
            .find(|(name, _, _)| *name == keys::CF_RECORDS)
            .copied()
            .unwrap();
        assert!(sst + memtables >= 4096, "records: {stats:?}");
    }
}
