//! Snapshot files, of two kinds. A partition that holds records snapshots one
//! checkpoint of its state (offsets and producers, never records):
//! `RFKC` | version (1 byte) | encoded checkpoint | crc32 of everything before.
//! The controller and the consumer-offsets partitions, whose state is all
//! they hold, snapshot every key they own in the state-machine column
//! families, read from one RocksDB snapshot so that the applied log id and the
//! data agree, and a follower installs it by replacing the group's key range:
//! `RFKS` | version (1 byte) | repeated
//! `cf: u8 | key_len: u32 | key | value_len: u32 | value`, then
//! `0xFF | crc32 of everything before`.
//!
//! A group's directory holds `<snapshot id>.snap` files, `current.json` naming
//! the current one, and temporary files while one is written. Building,
//! installing and removing hold the directory's lock, so none of them deletes
//! a file another is writing; every rename and unlink is followed by an fsync
//! of the directory, so after a crash `current.json` names a file that exists.
//! Should it not (the file was lost), that is no error: the state machine
//! builds a new snapshot when openraft asks for the current one.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use rocksdb::WriteBatch;

use super::{GroupId, LogId, SnapshotMeta, StoredMembership};
use crate::storage::keys::{self, CF_SM_STATE, STATE_MACHINE_CFS, TAG_APPLIED};
use crate::storage::partition::Checkpoint;
use crate::storage::{StorageError, Store};

const MAGIC: &[u8; 4] = b"RFKS";
/// Version 2 dropped the records column family, which version 1 files carried.
const FORMAT_VERSION: u8 = 2;
const CHECKPOINT_MAGIC: &[u8; 4] = b"RFKC";
const CHECKPOINT_VERSION: u8 = 1;
const END_MARKER: u8 = 0xFF;
const CURRENT_META: &str = "current.json";
const DATA_EXTENSION: &str = "snap";
/// How often a reader tries without the lock before it reads under it.
const CURRENT_READ_ATTEMPTS: usize = 3;

/// What a group's directory says its current snapshot is.
pub enum CurrentSnapshot {
    /// The snapshot and its file, open: it stays readable even if a newer
    /// snapshot replaces it afterwards.
    Found(SnapshotMeta, File),
    /// No snapshot was ever made current.
    None,
    /// One was made current, but `current.json` or the file it names cannot be
    /// read (lost with a disk, deleted by hand): the group has no snapshot.
    Lost(String),
}

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
    /// Serialises the operations that write or delete files in `dir`.
    lock: Arc<Mutex<()>>,
}

/// One lock per directory for the whole process: a group restarted on this node
/// gets a new state machine while its old snapshot builder may still be running.
fn lock_of(dir: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Weak<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(lock) = locks.get(dir).and_then(Weak::upgrade) {
        return lock;
    }
    locks.retain(|_, lock| lock.strong_count() > 0);
    let lock = Arc::new(Mutex::new(()));
    locks.insert(dir.to_path_buf(), Arc::downgrade(&lock));
    lock
}

/// Makes renames and unlinks in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)?.sync_all()?;
    Ok(())
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
        let dir = root.join(format!("group-{group}"));
        SnapshotDir {
            lock: lock_of(&dir),
            dir,
        }
    }

    fn locked(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn data_path(&self, meta: &SnapshotMeta) -> PathBuf {
        self.dir.join(format!("{}.{DATA_EXTENSION}", meta.snapshot_id))
    }

    /// A path no other operation uses, for a file being written.
    fn temp_path(&self, purpose: &str) -> PathBuf {
        self.dir
            .join(format!("{purpose}-{}.tmp", uuid::Uuid::new_v4().simple()))
    }

    fn create_dir(&self) -> Result<(), StorageError> {
        if !self.dir.is_dir() {
            fs::create_dir_all(&self.dir)?;
            if let Some(parent) = self.dir.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }

    /// The current snapshot. Reads without the lock, so that a long build does
    /// not hold up its caller, unless the file keeps vanishing: a newer snapshot
    /// may have replaced it between reading `current.json` and opening it.
    pub fn current(&self) -> Result<CurrentSnapshot, StorageError> {
        for _ in 0..CURRENT_READ_ATTEMPTS {
            match self.read_current()? {
                CurrentSnapshot::Lost(_) => continue,
                found_or_none => return Ok(found_or_none),
            }
        }
        let _locked = self.locked();
        self.read_current()
    }

    fn read_current(&self) -> Result<CurrentSnapshot, StorageError> {
        let meta: SnapshotMeta = match fs::read(self.dir.join(CURRENT_META)) {
            Ok(raw) => match serde_json::from_slice(&raw) {
                Ok(meta) => meta,
                Err(err) => return Ok(CurrentSnapshot::Lost(format!("unreadable {CURRENT_META}: {err}"))),
            },
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(CurrentSnapshot::None),
            Err(err) => return Err(err.into()),
        };
        let path = self.data_path(&meta);
        match File::open(&path) {
            Ok(file) => Ok(CurrentSnapshot::Found(meta, file)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                Ok(CurrentSnapshot::Lost(format!("{} is missing", path.display())))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Writes a new snapshot file with `content` (which fills the file at the
    /// path it is given and says what applied state it holds), makes it
    /// current and returns it open.
    pub fn build(
        &self,
        content: impl FnOnce(&Path) -> Result<AppliedState, StorageError>,
    ) -> Result<(SnapshotMeta, File), StorageError> {
        let _locked = self.locked();
        self.create_dir()?;
        let building = self.temp_path("building");
        let (applied, membership) = match content(&building) {
            Ok(state) => state,
            Err(err) => {
                let _ = fs::remove_file(&building);
                return Err(err);
            }
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: snapshot_id(applied),
        };
        let path = self.data_path(&meta);
        fs::rename(&building, &path)?;
        sync_dir(&self.dir)?;
        let file = File::open(&path)?;
        self.make_current(&meta)?;
        Ok((meta, file))
    }

    /// A file to receive a snapshot into from the leader. It has no name (it is
    /// unlinked at once), so an abandoned transfer leaves nothing behind and no
    /// cleanup can remove it under the transfer.
    pub fn receiving_file(&self) -> Result<File, StorageError> {
        self.create_dir()?;
        let path = self.temp_path("incoming");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        if let Err(err) = fs::remove_file(&path) {
            if err.kind() != std::io::ErrorKind::NotFound {
                return Err(err.into());
            }
        }
        Ok(file)
    }

    /// Replaces the group's state with the snapshot received in `incoming`
    /// (`load` checks it while it loads it) and makes it the current snapshot.
    pub fn install(
        &self,
        meta: &SnapshotMeta,
        incoming: &mut File,
        load: impl FnOnce(&Path) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let _locked = self.locked();
        self.create_dir()?;
        let installing = self.temp_path("installing");
        let copied = (|| -> Result<(), StorageError> {
            incoming.seek(SeekFrom::Start(0))?;
            let mut target = File::create(&installing)?;
            std::io::copy(incoming, &mut target)?;
            target.sync_all()?;
            load(&installing)
        })();
        if let Err(err) = copied {
            let _ = fs::remove_file(&installing);
            return Err(err);
        }
        fs::rename(&installing, self.data_path(meta))?;
        sync_dir(&self.dir)?;
        self.make_current(meta)
    }

    /// Deletes the group's snapshots (the group was dropped from this node).
    pub fn remove(&self) -> Result<(), StorageError> {
        let _locked = self.locked();
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            if err.kind() != std::io::ErrorKind::NotFound {
                return Err(err.into());
            }
        }
        if let Some(parent) = self.dir.parent().filter(|parent| parent.is_dir()) {
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// Records `meta` as current (its data file is in place) and deletes every
    /// other file. Called with the lock held, so nothing else is being written.
    fn make_current(&self, meta: &SnapshotMeta) -> Result<(), StorageError> {
        let tmp = self.temp_path("current");
        let json = serde_json::to_vec(meta).map_err(|err| StorageError::Encoding(err.to_string()))?;
        let mut file = File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        fs::rename(&tmp, self.dir.join(CURRENT_META))?;
        // The new name is durable before the old file goes: a crash in between
        // leaves an extra file, never a current.json naming a deleted one.
        sync_dir(&self.dir)?;
        let keep = self.data_path(meta);
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path != keep && path.file_name().is_some_and(|name| name != CURRENT_META) {
                // A file being received is unlinked by its receiver, without the lock.
                if let Err(err) = fs::remove_file(path) {
                    if err.kind() != std::io::ErrorKind::NotFound {
                        return Err(err.into());
                    }
                }
            }
        }
        sync_dir(&self.dir)
    }
}

fn snapshot_id(applied: Option<LogId>) -> String {
    let unique = uuid::Uuid::new_v4().simple();
    match applied {
        Some(log_id) => format!("{}-{}-{unique}", log_id.leader_id.term, log_id.index),
        None => format!("empty-{unique}"),
    }
}

/// Writes `checkpoint` as a partition snapshot file; the checkpoint's
/// replication part is the applied state it stands for.
pub fn write_checkpoint(path: &Path, checkpoint: &Checkpoint) -> Result<AppliedState, StorageError> {
    let applied: AppliedState = bincode::deserialize(&checkpoint.replication)?;
    let mut content = CHECKPOINT_MAGIC.to_vec();
    content.push(CHECKPOINT_VERSION);
    content.extend_from_slice(&checkpoint.encode()?);
    let crc = crc32fast::hash(&content);
    content.extend_from_slice(&crc.to_be_bytes());
    let mut file = File::create(path)?;
    file.write_all(&content)?;
    file.sync_all()?;
    Ok(applied)
}

/// Reads a partition snapshot file written by [`write_checkpoint`]: the
/// checkpoint and the applied state it stands for.
pub fn read_checkpoint(path: &Path, group: GroupId) -> Result<(Checkpoint, AppliedState), StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt {
        group,
        what: format!("partition snapshot: {what}"),
    };
    let content = fs::read(path)?;
    let header = CHECKPOINT_MAGIC.len() + 1;
    if content.len() < header + 4 || &content[..CHECKPOINT_MAGIC.len()] != CHECKPOINT_MAGIC {
        return Err(corrupt("not a partition snapshot"));
    }
    if content[CHECKPOINT_MAGIC.len()] != CHECKPOINT_VERSION {
        return Err(corrupt("unsupported format version"));
    }
    let (body, crc) = content.split_at(content.len() - 4);
    if crc32fast::hash(body) != u32::from_be_bytes(crc.try_into().unwrap_or_default()) {
        return Err(corrupt("checksum mismatch"));
    }
    let checkpoint = Checkpoint::decode(&body[header..])?;
    let applied = bincode::deserialize(&checkpoint.replication)?;
    Ok((checkpoint, applied))
}

/// Whether the file at `path` is a whole-state snapshot (as [`dump_group`] writes).
pub fn is_whole_state_snapshot(path: &Path) -> Result<bool, StorageError> {
    let mut magic = [0u8; 4];
    let mut file = File::open(path)?;
    Ok(file.read_exact(&mut magic).is_ok() && &magic == MAGIC)
}

/// Writes every state-machine key of `group` as a snapshot file.
pub fn dump_group(store: &Store, group: GroupId, path: &Path) -> Result<AppliedState, StorageError> {
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
    out.write_all(MAGIC)?;
    out.write_all(&[FORMAT_VERSION])?;
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
    let header = read_exact::<5>(&mut reader, &mut hasher)?;
    if header[..4] != MAGIC[..] {
        return Err(corrupt("not a snapshot file"));
    }
    if header[4] != FORMAT_VERSION {
        return Err(corrupt(&format!("unsupported format version {}", header[4])));
    }
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
    use crate::storage::keys::CF_SM_STATE as CF_DATA;

    fn store_with_records(dir: &Path, group: GroupId, count: u64) -> Store {
        let store = Store::open(dir).unwrap();
        let mut write = WriteBatch::default();
        for offset in 0..count {
            write.put_cf(
                store.cf(CF_DATA),
                keys::group_u64_key(group, offset),
                format!("batch {offset}"),
            );
        }
        store.write_durable(write).unwrap();
        store
    }

    fn group_keys(store: &Store, group: GroupId) -> Vec<crate::storage::KeyValue> {
        store
            .scan_group(CF_DATA, group, &keys::group_range(group).0)
            .map(|kv| kv.unwrap())
            .collect()
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_snapshot_installs_the_same_state_on_another_store() {
        let source_dir = tempfile::tempdir().unwrap();
        let source = store_with_records(source_dir.path(), 7, 5);
        source
            .db()
            .put_cf(source.cf(CF_DATA), keys::group_u64_key(8, 0), "another group")
            .unwrap();
        let snapshots = SnapshotDir::new(&source_dir.path().join("snapshots"), 7);
        let (meta, _) = snapshots.build(|path| dump_group(&source, 7, path)).unwrap();
        assert_eq!(current_id(&snapshots), Some(meta.snapshot_id.clone()));

        let target_dir = tempfile::tempdir().unwrap();
        let target = Store::open(target_dir.path()).unwrap();
        target
            .db()
            .put_cf(target.cf(CF_DATA), keys::group_u64_key(7, 99), "stale")
            .unwrap();
        let installed = SnapshotDir::new(&target_dir.path().join("snapshots"), 7);
        let mut incoming = installed.receiving_file().unwrap();
        std::io::copy(&mut File::open(snapshots.data_path(&meta)).unwrap(), &mut incoming).unwrap();
        installed
            .install(&meta, &mut incoming, |path| load_into_store(&target, 7, path))
            .unwrap();
        assert_eq!(
            group_keys(&target, 7),
            group_keys(&source, 7),
            "same keys and values; the stale key is gone"
        );
        assert!(
            target.get(CF_DATA, &keys::group_u64_key(8, 0)).unwrap().is_none(),
            "only the group's keys"
        );
        assert_eq!(current_id(&installed), Some(meta.snapshot_id.clone()));
        assert_eq!(
            files_in(&installed.dir),
            vec![CURRENT_META.to_string(), format!("{}.snap", meta.snapshot_id)],
            "the received file had no name; nothing temporary is left"
        );

        let mut corrupted = fs::read(snapshots.data_path(&meta)).unwrap();
        corrupted[7] ^= 0x01;
        let bad = target_dir.path().join("bad.snap");
        fs::write(&bad, &corrupted).unwrap();
        assert!(
            load_into_store(&target, 7, &bad).is_err(),
            "a damaged snapshot is refused"
        );
        let mut damaged = File::open(&bad).unwrap();
        let other = SnapshotMeta {
            snapshot_id: "damaged".into(),
            ..meta.clone()
        };
        assert!(installed
            .install(&other, &mut damaged, |path| load_into_store(&target, 7, path))
            .is_err());
        assert_eq!(
            current_id(&installed),
            Some(meta.snapshot_id.clone()),
            "still the good one"
        );
        assert_eq!(files_in(&installed.dir).len(), 2, "the refused copy is gone");
    }

    #[test]
    fn an_unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_records(dir.path(), 3, 4);
        let snapshots = SnapshotDir::new(&dir.path().join("snapshots"), 3);
        let (meta, _) = snapshots.build(|path| dump_group(&store, 3, path)).unwrap();
        let mut tagged = fs::read(snapshots.data_path(&meta)).unwrap();
        assert_eq!(&tagged[..4], MAGIC);
        tagged[MAGIC.len()] = FORMAT_VERSION + 1;
        let future = dir.path().join("future.snap");
        fs::write(&future, tagged).unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let other = Store::open(other_dir.path()).unwrap();
        assert!(load_into_store(&other, 3, &future).is_err());
    }

    #[test]
    fn a_checkpoint_file_round_trips_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let applied: AppliedState = (None, StoredMembership::default());
        let checkpoint = Checkpoint {
            offsets: Default::default(),
            producers: Default::default(),
            replication: bincode::serialize(&applied).unwrap(),
            epochs: Default::default(),
            state: b"groups".to_vec(),
        };
        let path = dir.path().join("checkpoint.snap");
        assert_eq!(write_checkpoint(&path, &checkpoint).unwrap(), applied);
        let (read, read_applied) = read_checkpoint(&path, 1).unwrap();
        assert_eq!((read, read_applied), (checkpoint, applied));
        let mut damaged = fs::read(&path).unwrap();
        damaged[6] ^= 1;
        fs::write(&path, damaged).unwrap();
        assert!(read_checkpoint(&path, 1).is_err());
    }

    fn current_id(snapshots: &SnapshotDir) -> Option<String> {
        match snapshots.current().unwrap() {
            CurrentSnapshot::Found(meta, _) => Some(meta.snapshot_id),
            CurrentSnapshot::None => None,
            CurrentSnapshot::Lost(why) => panic!("lost: {why}"),
        }
    }

    #[test]
    fn a_missing_snapshot_file_is_reported_as_lost_not_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_records(dir.path(), 5, 2);
        let snapshots = SnapshotDir::new(&dir.path().join("snapshots"), 5);
        assert_eq!(current_id(&snapshots), None, "none built yet");
        let (meta, _) = snapshots.build(|path| dump_group(&store, 5, path)).unwrap();
        fs::remove_file(snapshots.data_path(&meta)).unwrap();
        assert!(matches!(snapshots.current().unwrap(), CurrentSnapshot::Lost(_)));
        fs::write(snapshots.dir.join(CURRENT_META), b"{not json").unwrap();
        assert!(matches!(snapshots.current().unwrap(), CurrentSnapshot::Lost(_)));
        let (rebuilt, _) = snapshots.build(|path| dump_group(&store, 5, path)).unwrap();
        assert_eq!(current_id(&snapshots), Some(rebuilt.snapshot_id));
        snapshots.remove().unwrap();
        assert!(!snapshots.dir.exists());
        assert_eq!(current_id(&snapshots), None);
    }

    /// Builds and installs of one group racing from several threads, while a
    /// reader keeps opening the current snapshot: the race a spawned snapshot
    /// build and an install from the leader used to lose (each deleted the
    /// other's file). Every operation succeeds, the current snapshot can always
    /// be opened and read whole, and one data file is left.
    #[test]
    fn concurrent_builds_installs_and_reads_never_lose_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_records(dir.path(), 9, 50);
        let root = dir.path().join("snapshots");
        let source_dir = tempfile::tempdir().unwrap();
        let source_store = store_with_records(source_dir.path(), 9, 50);
        let (source_meta, _) = SnapshotDir::new(&source_dir.path().join("snapshots"), 9)
            .build(|path| dump_group(&source_store, 9, path))
            .unwrap();
        let source_bytes =
            fs::read(SnapshotDir::new(&source_dir.path().join("snapshots"), 9).data_path(&source_meta)).unwrap();
        SnapshotDir::new(&root, 9)
            .build(|path| dump_group(&store, 9, path))
            .unwrap();

        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let snapshots = SnapshotDir::new(&root, 9);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut reads = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let CurrentSnapshot::Found(_, mut file) = snapshots.current().unwrap() else {
                        panic!("no current snapshot while builds and installs race");
                    };
                    let mut bytes = Vec::new();
                    file.read_to_end(&mut bytes).unwrap();
                    assert_eq!(&bytes[..4], MAGIC, "a whole snapshot file");
                    reads += 1;
                }
                reads
            })
        };
        let workers: Vec<_> = (0..4)
            .map(|worker| {
                let snapshots = SnapshotDir::new(&root, 9);
                let store = store.clone();
                let source_bytes = source_bytes.clone();
                let source_meta = source_meta.clone();
                std::thread::spawn(move || {
                    for round in 0..20 {
                        if (worker + round) % 2 == 0 {
                            snapshots.build(|path| dump_group(&store, 9, path)).unwrap();
                        } else {
                            let mut incoming = snapshots.receiving_file().unwrap();
                            incoming.write_all(&source_bytes).unwrap();
                            let meta = SnapshotMeta {
                                snapshot_id: format!("installed-{worker}-{round}"),
                                ..source_meta.clone()
                            };
                            snapshots
                                .install(&meta, &mut incoming, |path| load_into_store(&store, 9, path))
                                .unwrap();
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);

        let snapshots = SnapshotDir::new(&root, 9);
        let id = current_id(&snapshots).unwrap();
        assert_eq!(
            files_in(&snapshots.dir),
            vec![CURRENT_META.to_string(), format!("{id}.snap")]
        );
    }
}
