//! Snapshot files. A group's snapshot is every key it owns in the state-machine
//! column families, read from one RocksDB snapshot so that the applied log id
//! and the data always agree. The same format serves the controller and every
//! partition, and a follower installs it by replacing the group's key range.
//!
//! File layout: repeated `cf: u8 | key_len: u32 | key | value_len: u32 | value`,
//! then `0xFF | crc32 of everything before`.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rocksdb::WriteBatch;

use super::{GroupId, LogId, SnapshotMeta, StoredMembership};
use crate::storage::keys::{self, CF_SM_STATE, STATE_MACHINE_CFS, TAG_APPLIED};
use crate::storage::{StorageError, Store};

const END_MARKER: u8 = 0xFF;
const CURRENT_META: &str = "current.json";

/// The applied position recorded with a group's state.
pub type AppliedState = (Option<LogId>, StoredMembership);

pub fn read_applied_state(store: &Store, group: GroupId) -> Result<AppliedState, StorageError> {
    match store.get(CF_SM_STATE, &keys::group_tag_key(group, TAG_APPLIED))? {
        Some(raw) => Ok(bincode::deserialize(&raw)?),
        None => Ok((None, StoredMembership::default())),
    }
}

/// Where one group keeps its snapshot files.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

struct Checksummed<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl SnapshotDir {
    pub fn new(root: &Path, group: GroupId) -> Self {
        SnapshotDir {
            dir: root.join(format!("group-{group}")),
        }
    }

    pub fn current_meta(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        match fs::read(self.dir.join(CURRENT_META)) {
            Ok(raw) => serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|err| StorageError::Encoding(err.to_string())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    pub fn data_path(&self, meta: &SnapshotMeta) -> PathBuf {
        self.dir.join(format!("{}.snap", meta.snapshot_id))
    }

    pub fn incoming_path(&self) -> Result<PathBuf, StorageError> {
        fs::create_dir_all(&self.dir)?;
        Ok(self.dir.join("incoming.snap"))
    }

    /// Writes the group's state to a new snapshot file and makes it current.
    pub fn build(&self, store: &Store, group: GroupId) -> Result<SnapshotMeta, StorageError> {
        fs::create_dir_all(&self.dir)?;
        let building = self.dir.join("building.snap");
        let (applied, membership) = dump_group(store, group, &building)?;
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: snapshot_id(applied),
        };
        fs::rename(&building, self.data_path(&meta))?;
        self.make_current(&meta)?;
        Ok(meta)
    }

    /// Records `meta` as current (its data file must be in place) and drops older files.
    pub fn make_current(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let tmp = self.dir.join("current.json.tmp");
        let json = serde_json::to_vec(meta).map_err(|err| StorageError::Encoding(err.to_string()))?;
        fs::write(&tmp, json)?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, self.dir.join(CURRENT_META))?;
        let keep = self.data_path(meta);
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|ext| ext == "snap") && path != keep {
                fs::remove_file(path)?;
            }
        }
        Ok(())
    }
}

fn snapshot_id(applied: Option<LogId>) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    match applied {
        Some(log_id) => format!("{}-{}-{nanos}", log_id.leader_id.term, log_id.index),
        None => format!("empty-{nanos}"),
    }
}

fn dump_group(store: &Store, group: GroupId, path: &Path) -> Result<AppliedState, StorageError> {
    let db = store.db();
    let view = db.snapshot();
    let applied = match view.get_cf(store.cf(CF_SM_STATE), keys::group_tag_key(group, TAG_APPLIED))? {
        Some(raw) => bincode::deserialize(&raw)?,
        None => (None, StoredMembership::default()),
    };
    let mut out = Checksummed {
        inner: BufWriter::new(File::create(path)?),
        hasher: crc32fast::Hasher::new(),
    };
    let (start, end) = keys::group_range(group);
    for (cf_index, cf) in STATE_MACHINE_CFS.iter().enumerate() {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(end.clone());
        let iter = view.iterator_cf_opt(
            store.cf(cf),
            opts,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            out.write_all(&[cf_index as u8])?;
            for part in [&key, &value] {
                out.write_all(&(part.len() as u32).to_be_bytes())?;
                out.write_all(part)?;
            }
        }
    }
    out.write_all(&[END_MARKER])?;
    let crc = out.hasher.clone().finalize();
    let mut inner = out.inner;
    inner.write_all(&crc.to_be_bytes())?;
    inner.into_inner().map_err(|err| err.into_error())?.sync_all()?;
    Ok(applied)
}

/// Replaces the group's state with the snapshot in `path`, durably.
pub fn load_into_store(store: &Store, group: GroupId, path: &Path) -> Result<(), StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt {
        group,
        what: format!("snapshot: {what}"),
    };
    let mut reader = BufReader::new(File::open(path)?);
    let mut hasher = crc32fast::Hasher::new();
    let mut write = WriteBatch::default();
    store.delete_group_in(&mut write, group, &STATE_MACHINE_CFS);
    loop {
        let tag = read_exact::<1>(&mut reader, &mut hasher)?[0];
        if tag == END_MARKER {
            break;
        }
        let cf = STATE_MACHINE_CFS
            .get(tag as usize)
            .ok_or_else(|| corrupt("unknown column family"))?;
        let key = read_part(&mut reader, &mut hasher)?;
        let value = read_part(&mut reader, &mut hasher)?;
        if !key.starts_with(&group.to_be_bytes()) {
            return Err(corrupt("key of another group"));
        }
        write.put_cf(store.cf(cf), key, value);
    }
    let expected = hasher.finalize();
    let mut crc = [0u8; 4];
    reader.read_exact(&mut crc)?;
    if u32::from_be_bytes(crc) != expected {
        return Err(corrupt("checksum mismatch"));
    }
    store.write_durable(write)
}

fn read_exact<const N: usize>(reader: &mut impl Read, hasher: &mut crc32fast::Hasher) -> Result<[u8; N], StorageError> {
    let mut buf = [0u8; N];
    reader.read_exact(&mut buf)?;
    hasher.update(&buf);
    Ok(buf)
}

fn read_part(reader: &mut impl Read, hasher: &mut crc32fast::Hasher) -> Result<Vec<u8>, StorageError> {
    let len = u32::from_be_bytes(read_exact::<4>(reader, hasher)?) as usize;
    let mut part = Vec::new();
    reader.take(len as u64).read_to_end(&mut part)?;
    if part.len() != len {
        return Err(StorageError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    hasher.update(&part);
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::keys::CF_RECORDS;

    #[test]
    fn a_snapshot_installs_the_same_state_on_another_store() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = Store::open(source_dir.path()).unwrap();
        let mut write = WriteBatch::default();
        for offset in 0..5u64 {
            write.put_cf(
                source.cf(CF_RECORDS),
                keys::group_u64_key(7, offset),
                format!("batch {offset}"),
            );
        }
        write.put_cf(source.cf(CF_RECORDS), keys::group_u64_key(8, 0), "another group");
        source.write_durable(write).unwrap();
        let snapshots = SnapshotDir::new(&source_dir.path().join("snapshots"), 7);
        let meta = snapshots.build(&source, 7).unwrap();
        assert_eq!(snapshots.current_meta().unwrap().unwrap().snapshot_id, meta.snapshot_id);

        let target_dir = tempfile::tempdir().unwrap();
        let target = Store::open(target_dir.path()).unwrap();
        target
            .db()
            .put_cf(target.cf(CF_RECORDS), keys::group_u64_key(7, 99), "stale")
            .unwrap();
        load_into_store(&target, 7, &snapshots.data_path(&meta)).unwrap();
        let copied: Vec<_> = target
            .scan_group(CF_RECORDS, 7, &keys::group_range(7).0)
            .map(|kv| kv.unwrap())
            .collect();
        let original: Vec<_> = source
            .scan_group(CF_RECORDS, 7, &keys::group_range(7).0)
            .map(|kv| kv.unwrap())
            .collect();
        assert_eq!(copied, original, "same keys and values; the stale key is gone");
        assert!(
            target.get(CF_RECORDS, &keys::group_u64_key(8, 0)).unwrap().is_none(),
            "only the group's keys"
        );

        let mut corrupted = std::fs::read(snapshots.data_path(&meta)).unwrap();
        corrupted[3] ^= 0x01;
        let bad = target_dir.path().join("bad.snap");
        std::fs::write(&bad, corrupted).unwrap();
        assert!(
            load_into_store(&target, 7, &bad).is_err(),
            "a damaged snapshot is refused"
        );
    }
}
