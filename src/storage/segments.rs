//! An append-only log of numbered records in segment files: the form in which
//! each payload byte reaches the disk once.
//!
//! A log is a directory of files named by the index of their first record
//! (`<index, 20 digits>.log`). Each record is framed as
//! `len: u32 | crc32: u32 | version: u8 | index: u64 | payload`, big-endian,
//! where `len` counts from `version` to the end and the CRC covers the same
//! bytes. Indexes are consecutive across files. Appends go to the newest file
//! and are fsynced before they return; a file that has grown past the roll
//! size or age is closed and the next record starts a new one, so that freeing
//! the oldest records is deleting whole files.
//!
//! One writer (appends, truncation, purges) at a time, any number of readers:
//! a reader copies a record's file handle and position under the lock and
//! reads outside it, so a purge that unlinks the file does not break a read in
//! flight.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::StorageError;

const FORMAT_VERSION: u8 = 1;
/// `len` and `crc32`.
const FRAME_PREFIX: usize = 8;
/// `version` and `index`.
const RECORD_HEADER: usize = 9;
const EXTENSION: &str = "log";
/// A record larger than this is corruption, not data: payloads are bounded by
/// the broker's request size limits long before it.
const MAX_RECORD_BYTES: u32 = 1 << 30;

/// When the newest file is closed and a new one started.
#[derive(Debug, Clone, Copy)]
pub struct RollPolicy {
    pub max_bytes: u64,
    pub max_age: Duration,
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Byte position of record `first + i`.
    positions: Vec<u64>,
    len: u64,
    opened: Instant,
    /// No further record goes into this file.
    closed: bool,
}

impl Segment {
    fn next_index(&self) -> u64 {
        self.first + self.positions.len() as u64
    }

    fn last_index(&self) -> Option<u64> {
        self.next_index().checked_sub(1).filter(|last| *last >= self.first)
    }

    fn span(&self, index: u64) -> Option<(u64, u64)> {
        let i = usize::try_from(index.checked_sub(self.first)?).ok()?;
        let start = *self.positions.get(i)?;
        let end = self.positions.get(i + 1).copied().unwrap_or(self.len);
        Some((start, end - start))
    }
}

pub struct SegmentLog {
    dir: PathBuf,
    roll: RollPolicy,
    segments: RwLock<BTreeMap<u64, Segment>>,
    /// Serialises the writer's operations.
    writer: Mutex<()>,
}

fn file_name(first: u64) -> String {
    format!("{first:020}.{EXTENSION}")
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn frame(index: u64, payload: &[u8], out: &mut Vec<u8>) {
    let len = (RECORD_HEADER + payload.len()) as u32;
    let start = out.len();
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + FRAME_PREFIX..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// A record's index and payload, checked against its frame.
fn unframe(raw: &[u8]) -> Option<(u64, &[u8])> {
    let len = u32::from_be_bytes(raw.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(raw.get(4..8)?.try_into().ok()?);
    let body = raw.get(FRAME_PREFIX..FRAME_PREFIX + len)?;
    if len < RECORD_HEADER || crc32fast::hash(body) != crc || body[0] != FORMAT_VERSION {
        return None;
    }
    let index = u64::from_be_bytes(body[1..RECORD_HEADER].try_into().ok()?);
    Some((index, &body[RECORD_HEADER..]))
}

impl SegmentLog {
    /// Opens (creating if needed) the log in `dir`. A record cut short or
    /// damaged at the very end of the newest file is what a crash during an
    /// unacknowledged append leaves, and is cut off; damage anywhere else is
    /// reported.
    pub fn open(dir: &Path, roll: RollPolicy) -> Result<Self, StorageError> {
        if !dir.is_dir() {
            fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let mut firsts = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
                continue;
            }
            let first = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|stem| stem.parse::<u64>().ok())
                .ok_or_else(|| corrupt(dir, format!("unexpected file {}", path.display())))?;
            firsts.push(first);
        }
        firsts.sort_unstable();
        let mut segments = BTreeMap::new();
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let newest = i + 1 == count;
            let segment = load_segment(dir, first, newest)?;
            if let Some((_, previous)) = segments.last_key_value() {
                let previous: &Segment = previous;
                if previous.next_index() != first {
                    return Err(corrupt(
                        dir,
                        format!("file {first} does not follow record {}", previous.next_index()),
                    ));
                }
            }
            segments.insert(first, segment);
        }
        Ok(SegmentLog {
            dir: dir.to_path_buf(),
            roll,
            segments: RwLock::new(segments),
            writer: Mutex::new(()),
        })
    }

    fn read_segments(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Segment>> {
        self.segments.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_segments(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, Segment>> {
        self.segments.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `(first, last)` index held, if any.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let segments = self.read_segments();
        let first = segments.values().find(|s| !s.positions.is_empty())?.first;
        let last = segments.values().rev().find_map(Segment::last_index)?;
        Some((first, last))
    }

    /// Bytes the log's files hold.
    pub fn disk_bytes(&self) -> u64 {
        self.read_segments().values().map(|s| s.len).sum()
    }

    /// Whether `index` is the last record of a closed file: the records up to
    /// it can be freed by deleting files.
    pub fn ends_file(&self, index: u64) -> bool {
        let segments = self.read_segments();
        segments
            .range(..=index)
            .next_back()
            .is_some_and(|(_, s)| s.closed && s.last_index() == Some(index))
    }

    /// Appends `records`, which must continue the log (any start when it is
    /// empty), and returns once they are on disk.
    pub fn append<'a>(&self, records: impl IntoIterator<Item = (u64, &'a [u8])>) -> Result<(), StorageError> {
        let _writer = self.lock_writer();
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        let mut first_index = None;
        let mut expected = None;
        for (index, payload) in records {
            if expected.is_some_and(|e| e != index) {
                return Err(corrupt(&self.dir, format!("append of {index} is not consecutive")));
            }
            first_index.get_or_insert(index);
            expected = Some(index + 1);
            offsets.push(bytes.len() as u64);
            frame(index, payload, &mut bytes);
        }
        let Some(first_index) = first_index else { return Ok(()) };
        let (file, start) = self.active_file(first_index)?;
        file.write_all_at(&bytes, start)?;
        file.sync_data()?;
        let mut segments = self.write_segments();
        let segment = segments
            .values_mut()
            .next_back()
            .ok_or_else(|| corrupt(&self.dir, "the active file vanished".into()))?;
        segment.positions.extend(offsets.iter().map(|offset| start + offset));
        segment.len = start + bytes.len() as u64;
        if segment.len >= self.roll.max_bytes || segment.opened.elapsed() >= self.roll.max_age {
            segment.closed = true;
        }
        Ok(())
    }

    /// The file the record `index` goes into, and where; a new one when the
    /// newest is closed or the log is empty.
    fn active_file(&self, index: u64) -> Result<(Arc<File>, u64), StorageError> {
        {
            let segments = self.read_segments();
            if let Some(segment) = segments.values().next_back() {
                if segment.next_index() != index && !segment.positions.is_empty() {
                    return Err(corrupt(
                        &self.dir,
                        format!("append of {index} after record {}", segment.next_index() - 1),
                    ));
                }
                if !segment.closed && segment.next_index() == index {
                    return Ok((Arc::clone(&segment.file), segment.len));
                }
            }
        }
        let path = self.dir.join(file_name(index));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        sync_dir(&self.dir)?;
        let file = Arc::new(file);
        let mut segments = self.write_segments();
        // An empty newest file (its only record was torn by a crash) is replaced.
        let empty: Vec<u64> = segments
            .values()
            .filter(|s| s.positions.is_empty() && s.first != index)
            .map(|s| s.first)
            .collect();
        for first in empty {
            if let Some(segment) = segments.remove(&first) {
                fs::remove_file(&segment.path)?;
            }
        }
        segments.insert(
            index,
            Segment {
                first: index,
                path,
                file: Arc::clone(&file),
                positions: Vec::new(),
                len: 0,
                opened: Instant::now(),
                closed: false,
            },
        );
        Ok((file, 0))
    }

    /// The payload of record `index`, or `None` when the log does not hold it.
    pub fn read(&self, index: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let located = {
            let segments = self.read_segments();
            segments
                .range(..=index)
                .next_back()
                .and_then(|(_, s)| Some((Arc::clone(&s.file), s.span(index)?)))
        };
        let Some((file, (position, len))) = located else {
            return Ok(None);
        };
        let mut raw = vec![0; len as usize];
        file.read_exact_at(&mut raw, position)?;
        match unframe(&raw) {
            Some((found, payload)) if found == index => Ok(Some(payload.to_vec())),
            _ => Err(corrupt(&self.dir, format!("record {index} fails its checksum"))),
        }
    }

    /// Removes records from `index` on.
    pub fn truncate_from(&self, index: u64) -> Result<(), StorageError> {
        let _writer = self.lock_writer();
        let mut segments = self.write_segments();
        let doomed: Vec<u64> = segments.range(index..).map(|(first, _)| *first).collect();
        let removed = !doomed.is_empty();
        for first in doomed {
            if let Some(segment) = segments.remove(&first) {
                fs::remove_file(&segment.path)?;
            }
        }
        if let Some((_, segment)) = segments.range_mut(..index).next_back() {
            if let Some((position, _)) = segment.span(index) {
                segment.file.set_len(position)?;
                segment.file.sync_all()?;
                segment.positions.truncate((index - segment.first) as usize);
                segment.len = position;
                // Later records must follow in this file, or a new one would
                // start at an index this file still claims.
                segment.closed = false;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Frees every file whose records all lie at or below `index`.
    pub fn purge_through(&self, index: u64) -> Result<(), StorageError> {
        let _writer = self.lock_writer();
        let mut segments = self.write_segments();
        let doomed: Vec<u64> = segments
            .values()
            .filter(|s| s.last_index().is_none_or(|last| last <= index) && s.first <= index)
            .map(|s| s.first)
            .collect();
        if doomed.is_empty() {
            return Ok(());
        }
        for first in doomed {
            if let Some(segment) = segments.remove(&first) {
                fs::remove_file(&segment.path)?;
            }
        }
        sync_dir(&self.dir)
    }

    /// Deletes the whole log.
    pub fn remove(dir: &Path) -> Result<(), StorageError> {
        match fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err.into()),
        }
        if let Some(parent) = dir.parent().filter(|parent| parent.is_dir()) {
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// Whether `dir` holds a log with at least one file.
    pub fn exists(dir: &Path) -> bool {
        fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
    }
}

fn corrupt(dir: &Path, what: String) -> StorageError {
    StorageError::Corrupt {
        group: 0,
        what: format!("log {}: {what}", dir.display()),
    }
}

/// Reads a file's record positions. In the newest file a damaged or partial
/// last record is cut off (it was never acknowledged); elsewhere it is damage.
fn load_segment(dir: &Path, first: u64, newest: bool) -> Result<Segment, StorageError> {
    let path = dir.join(file_name(first));
    let file = OpenOptions::new().read(true).write(true).open(&path)?;
    let mut raw = Vec::new();
    (&file).read_to_end(&mut raw)?;
    let mut positions = Vec::new();
    let mut position = 0usize;
    while position < raw.len() {
        let rest = &raw[position..];
        let declared = rest
            .get(..4)
            .map(|len| u32::from_be_bytes(len.try_into().unwrap_or_default()));
        let record = declared
            .filter(|len| *len <= MAX_RECORD_BYTES)
            .and_then(|_| unframe(rest));
        let expected = first + positions.len() as u64;
        match (record, declared) {
            (Some((index, _)), Some(len)) if index == expected => {
                positions.push(position as u64);
                position += FRAME_PREFIX + len as usize;
            }
            // Whole and checksummed, but not the record that belongs here: damage.
            (Some((index, _)), _) => {
                return Err(corrupt(
                    dir,
                    format!("{} holds record {index} where {expected} belongs", path.display()),
                ))
            }
            _ if newest => {
                tracing::warn!(
                    file = %path.display(),
                    at = position,
                    "cutting off a partly written record at the end of the log"
                );
                file.set_len(position as u64)?;
                file.sync_all()?;
                break;
            }
            _ => {
                return Err(corrupt(
                    dir,
                    format!("damaged record at byte {position} of {}", path.display()),
                ))
            }
        }
    }
    let len = positions.last().map_or(0, |_| position as u64);
    Ok(Segment {
        first,
        path,
        file: Arc::new(file),
        positions,
        len,
        opened: Instant::now(),
        // Appends after a restart go to a new file: the old ones stay whole.
        closed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: RollPolicy = RollPolicy {
        max_bytes: 100,
        max_age: Duration::from_secs(3600),
    };

    fn payload(index: u64) -> Vec<u8> {
        format!("record {index}").repeat(3).into_bytes()
    }

    fn append_range(log: &SegmentLog, range: std::ops::Range<u64>) {
        let payloads: Vec<(u64, Vec<u8>)> = range.map(|i| (i, payload(i))).collect();
        log.append(payloads.iter().map(|(i, p)| (*i, p.as_slice()))).unwrap();
    }

    fn files(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn records_survive_reopen_and_files_roll_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = SegmentLog::open(&path, SMALL).unwrap();
        assert_eq!(log.bounds(), None);
        for i in 5..25 {
            append_range(&log, i..i + 1);
        }
        assert_eq!(log.bounds(), Some((5, 24)));
        assert!(files(&path) > 3, "rolled into several files");
        let boundary = (5..25).find(|i| log.ends_file(*i)).unwrap();
        assert!(!log.ends_file(24), "the newest file is open");
        drop(log);

        let log = SegmentLog::open(&path, SMALL).unwrap();
        assert_eq!(log.bounds(), Some((5, 24)));
        for i in 5..25 {
            assert_eq!(log.read(i).unwrap(), Some(payload(i)));
        }
        assert_eq!(log.read(4).unwrap(), None);
        assert_eq!(log.read(25).unwrap(), None);
        append_range(&log, 25..27);
        assert_eq!(log.read(26).unwrap(), Some(payload(26)));

        let before = log.disk_bytes();
        log.purge_through(boundary).unwrap();
        assert!(log.disk_bytes() < before, "whole files were freed");
        assert_eq!(log.read(boundary + 1).unwrap(), Some(payload(boundary + 1)));
        assert!(append_range_err(&log, 40..41), "a gap is refused");
    }

    fn append_range_err(log: &SegmentLog, range: std::ops::Range<u64>) -> bool {
        let payloads: Vec<(u64, Vec<u8>)> = range.map(|i| (i, payload(i))).collect();
        log.append(payloads.iter().map(|(i, p)| (*i, p.as_slice()))).is_err()
    }

    #[test]
    fn truncation_removes_the_tail_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), SMALL).unwrap();
        append_range(&log, 1..20);
        log.truncate_from(7).unwrap();
        assert_eq!(log.bounds(), Some((1, 6)));
        assert_eq!(log.read(7).unwrap(), None);
        append_range(&log, 7..9);
        assert_eq!(log.read(8).unwrap(), Some(payload(8)));
        drop(log);
        let log = SegmentLog::open(dir.path(), SMALL).unwrap();
        assert_eq!(log.bounds(), Some((1, 8)));
        log.purge_through(100).unwrap();
        assert_eq!(log.bounds(), None);
        append_range(&log, 101..103);
        assert_eq!(log.bounds(), Some((101, 102)), "an emptied log starts anywhere");
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_damage_elsewhere_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), SMALL).unwrap();
        append_range(&log, 0..6);
        append_range(&log, 6..12);
        drop(log);
        let mut names: Vec<PathBuf> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        let newest = names.last().unwrap().clone();
        let len = fs::metadata(&newest).unwrap().len();
        let file = OpenOptions::new().write(true).open(&newest).unwrap();
        file.set_len(len - 3).unwrap();
        let log = SegmentLog::open(dir.path(), SMALL).unwrap();
        assert_eq!(log.bounds(), Some((0, 10)), "the torn last record is gone");
        drop(log);

        let oldest = names.first().unwrap();
        let mut raw = fs::read(oldest).unwrap();
        raw[FRAME_PREFIX + RECORD_HEADER] ^= 0x20;
        fs::write(oldest, raw).unwrap();
        assert!(SegmentLog::open(dir.path(), SMALL).is_err(), "damage in a closed file");
    }
}
