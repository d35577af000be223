//! RocksDB storage: one database per node shared by every Raft group.

pub mod batch;
pub mod compaction;
pub mod decompress;
pub mod epochs;
pub mod keys;
pub mod partition;
pub mod producers;
pub mod segments;

use std::path::Path;
use std::sync::Arc;

use rocksdb::statistics::{StatsLevel, Ticker};
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
    #[error("data dir format: {0}")]
    Format(String),
}

impl From<bincode::Error> for StorageError {
    fn from(err: bincode::Error) -> Self {
        StorageError::Encoding(err.to_string())
    }
}

/// The size of a filesystem and the bytes an unprivileged writer may still use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VolumeSpace {
    pub total_bytes: u64,
    pub usable_bytes: u64,
}

/// The space of the filesystem holding `path`, or None if it cannot be asked.
pub fn volume_space(path: &Path) -> Option<VolumeSpace> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stats` points to writable
    // memory of the struct's size; it is read only when statvfs succeeded.
    let stats = unsafe {
        if libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) != 0 {
            return None;
        }
        stats.assume_init()
    };
    // The field types are platform aliases (u32 or u64): widened, never cut.
    let block = stats.f_frsize as u64;
    Some(VolumeSpace {
        total_bytes: (stats.f_blocks as u64).saturating_mul(block),
        usable_bytes: (stats.f_bavail as u64).saturating_mul(block),
    })
}

/// Memory all column families' memtables may use before RocksDB flushes the largest.
const MEMTABLE_BUDGET_BYTES: usize = 128 << 20;

/// The layout of a data dir: RocksDB for state and indexes, segment files for
/// log entries. Format 1 (no marker file) kept records in RocksDB.
const DATA_FORMAT: &str = "rafka-data 2";
const FORMAT_FILE: &str = "FORMAT";

/// Marks a new data dir with its format, and refuses one written in another.
fn check_format(dir: &Path) -> Result<(), StorageError> {
    let marker = dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&marker) {
        Ok(found) if found.trim() == DATA_FORMAT => Ok(()),
        Ok(found) => Err(StorageError::Format(format!(
            "{} says {:?}; this broker reads {DATA_FORMAT:?}",
            marker.display(),
            found.trim()
        ))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            if dir.join("db").exists() {
                return Err(StorageError::Format(format!(
                    "{} holds data in the first format (records inside RocksDB), which this \
                     broker no longer reads; move it aside to start empty",
                    dir.display()
                )));
            }
            let mut file = std::fs::File::create(&marker)?;
            std::io::Write::write_all(&mut file, format!("{DATA_FORMAT}\n").as_bytes())?;
            file.sync_all()?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}

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
    /// Bytes written by memtable flushes since the node started.
    pub flush_write_bytes: u64,
    /// Bytes compactions read and wrote since the node started.
    pub compaction_read_bytes: u64,
    pub compaction_write_bytes: u64,
}

/// The node's database. Cloning is cheap; all clones share one RocksDB instance.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    /// The options the database was opened with: they hold its statistics.
    options: Arc<Options>,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)?;
        check_format(dir)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // One cap for the memtables of every column family: RocksDB's default of
        // 64 MiB twice per family let one node reach half a gigabyte under load.
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET_BYTES);
        // Counters only (flush and compaction bytes): no histograms or timers
        // on the write path.
        opts.enable_statistics();
        opts.set_statistics_level(StatsLevel::ExceptHistogramOrTimers);
        // Every column family shares the WAL, so a synced write (a vote, a purge
        // point) also makes the state machine's earlier unsynced writes durable.
        let descriptors = keys::ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir.join("db"), descriptors)?;
        Ok(Store {
            db: Arc::new(db),
            options: Arc::new(opts),
        })
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
            flush_write_bytes: self.options.get_ticker_count(Ticker::FlushWriteBytes),
            compaction_read_bytes: self.options.get_ticker_count(Ticker::CompactReadBytes),
            compaction_write_bytes: self.options.get_ticker_count(Ticker::CompactWriteBytes),
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

    /// Whether `cf` holds any key of `group`.
    pub fn has_group_keys(&self, cf: &str, group: u64) -> Result<bool, StorageError> {
        Ok(self
            .scan_group(cf, group, &group.to_be_bytes())
            .next()
            .transpose()?
            .is_some())
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
        write.put_cf(store.cf(keys::CF_SM_STATE), keys::group_u64_key(1, 0), vec![7u8; 4096]);
        store.write_durable(write).unwrap();
        let stats = store.stats().unwrap();
        assert!(!stats.write_stopped);
        let names: Vec<&str> = stats.column_families.iter().map(|(name, _, _)| *name).collect();
        assert_eq!(names, keys::ALL_CFS);
        let (_, sst, memtables) = stats
            .column_families
            .iter()
            .find(|(name, _, _)| *name == keys::CF_SM_STATE)
            .copied()
            .unwrap();
        assert!(sst + memtables >= 4096, "sm_state: {stats:?}");
        store.db().flush_cf(store.cf(keys::CF_SM_STATE)).unwrap();
        // The SST is compressed: fewer bytes than went in, but some.
        assert!(store.stats().unwrap().flush_write_bytes > 0, "a flush is counted");
    }

    #[test]
    fn a_data_dir_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        drop(Store::open(dir.path()).expect("its own format reopens"));
        std::fs::remove_file(dir.path().join(FORMAT_FILE)).unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StorageError::Format(_))));
        std::fs::write(dir.path().join(FORMAT_FILE), "rafka-data 9\n").unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StorageError::Format(_))));
    }

    #[test]
    fn the_volume_of_a_dir_is_measured_and_a_missing_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let space = volume_space(dir.path()).expect("a temporary dir's volume");
        assert!(
            space.total_bytes >= space.usable_bytes && space.total_bytes > 0,
            "{space:?}"
        );
        assert_eq!(volume_space(&dir.path().join("missing")), None);
    }
}
