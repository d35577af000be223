//! A file's bytes as the filesystem shows them: what was synced, in the
//! backing file, overlaid with the writes and size changes made since, held in
//! memory until the next fsync copies them to the backing file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Larger sizes are refused (EFBIG): no offset arithmetic can then overflow.
pub const MAX_FILE_BYTES: u64 = 1 << 40;

#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge;

pub struct Content {
    /// Holds exactly the synced bytes.
    backing: File,
    synced_len: u64,
    /// How much of the backing file still shows through: a truncation since
    /// the last sync hides the rest, so growing the file again shows zeros.
    visible_backing: u64,
    len: u64,
    /// Unsynced writes by start offset: disjoint, non-adjacent, inside `len`.
    dirty: BTreeMap<u64, Vec<u8>>,
}

impl Content {
    /// A file whose synced state is whatever `backing` holds now.
    pub fn new(backing: File) -> io::Result<Self> {
        let len = backing.metadata()?.len();
        Ok(Content {
            backing,
            synced_len: len,
            visible_backing: len,
            len,
            dirty: BTreeMap::new(),
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn backing(&self) -> &File {
        &self.backing
    }

    /// Up to `size` bytes from `offset`, fewer at the end of the file.
    pub fn read(&self, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        if offset >= self.len {
            return Ok(Vec::new());
        }
        let end = self.len.min(offset.saturating_add(u64::from(size)));
        let mut out = vec![0; (end - offset) as usize];
        let from_backing = end.min(self.visible_backing);
        if offset < from_backing {
            self.backing
                .read_exact_at(&mut out[..(from_backing - offset) as usize], offset)?;
        }
        let before = self.dirty.range(..offset).next_back();
        for (&start, bytes) in before.into_iter().chain(self.dirty.range(offset..end)) {
            let (from, to) = (start.max(offset), (start + bytes.len() as u64).min(end));
            if from < to {
                out[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&bytes[(from - start) as usize..(to - start) as usize]);
            }
        }
        Ok(out)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), TooLarge> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|end| *end <= MAX_FILE_BYTES)
            .ok_or(TooLarge)?;
        if data.is_empty() {
            return Ok(());
        }
        // The write joins the extent it overlaps or continues (appends, the
        // common case, extend one buffer in place) and swallows the extents
        // it overlaps or touches further on.
        let start = match self.dirty.range(..=offset).next_back() {
            Some((&start, bytes)) if start + bytes.len() as u64 >= offset => start,
            _ => offset,
        };
        let mut merged = self.dirty.remove(&start).unwrap_or_default();
        let at = (offset - start) as usize;
        if merged.len() < at + data.len() {
            merged.resize(at + data.len(), 0);
        }
        merged[at..at + data.len()].copy_from_slice(data);
        let mut merged_end = start + merged.len() as u64;
        while let Some(next) = self.dirty.range(start + 1..=merged_end).next().map(|(s, _)| *s) {
            let swallowed = self.dirty.remove(&next).unwrap_or_default();
            let swallowed_end = next + swallowed.len() as u64;
            if swallowed_end > merged_end {
                merged.extend_from_slice(&swallowed[(merged_end - next) as usize..]);
                merged_end = swallowed_end;
            }
        }
        self.dirty.insert(start, merged);
        self.len = self.len.max(end);
        Ok(())
    }

    pub fn set_len(&mut self, len: u64) -> Result<(), TooLarge> {
        if len > MAX_FILE_BYTES {
            return Err(TooLarge);
        }
        if len < self.len {
            self.dirty.split_off(&len);
            if let Some((&start, bytes)) = self.dirty.iter_mut().next_back() {
                bytes.truncate((len - start) as usize);
            }
            self.visible_backing = self.visible_backing.min(len);
        }
        self.len = len;
        Ok(())
    }

    /// Bytes written since the last sync, or `None` when the file shows
    /// exactly its synced state.
    pub fn unsynced_bytes(&self) -> Option<u64> {
        let changed = !self.dirty.is_empty() || self.len != self.synced_len || self.visible_backing != self.synced_len;
        changed.then(|| self.dirty.values().map(|bytes| bytes.len() as u64).sum())
    }

    /// Makes the bytes and size shown now the synced state.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.visible_backing < self.synced_len {
            self.backing.set_len(self.visible_backing)?;
        }
        for (&start, bytes) in &self.dirty {
            self.backing.write_all_at(bytes, start)?;
        }
        self.backing.set_len(self.len)?;
        self.dirty.clear();
        self.synced_len = self.len;
        self.visible_backing = self.len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content_over(bytes: &[u8]) -> (tempfile::NamedTempFile, Content) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        let content = Content::new(File::options().read(true).write(true).open(file.path()).unwrap()).unwrap();
        (file, content)
    }

    fn all(content: &Content) -> Vec<u8> {
        content.read(0, u32::MAX).unwrap()
    }

    #[test]
    fn writes_show_at_once_and_reach_the_backing_file_only_on_sync() {
        let (file, mut content) = content_over(b"0123456789");
        content.write(8, b"abcd").unwrap();
        content.write(2, b"X").unwrap();
        assert_eq!(all(&content), b"01X34567abcd");
        assert_eq!(std::fs::read(file.path()).unwrap(), b"0123456789");
        content.sync().unwrap();
        assert_eq!(std::fs::read(file.path()).unwrap(), b"01X34567abcd");
    }

    #[test]
    fn overlapping_and_touching_writes_merge_into_one_extent() {
        let (_file, mut content) = content_over(b"");
        content.write(10, b"cccc").unwrap();
        content.write(0, b"aaaa").unwrap();
        content.write(20, b"eeee").unwrap();
        content.write(4, b"bbbbbbbb").unwrap(); // touches 0..4, overlaps 10..14
        assert_eq!(content.dirty.len(), 2);
        let mut expected = b"aaaabbbbbbbbcc".to_vec();
        expected.extend_from_slice(&[0; 6]);
        expected.extend_from_slice(b"eeee");
        assert_eq!(all(&content), expected);
        content.write(2, b"zz").unwrap(); // inside an extent
        assert_eq!(&all(&content)[..6], b"aazzbb");
        assert_eq!(content.read(11, 2).unwrap(), b"bc");
        assert_eq!(content.read(24, 10).unwrap(), b"");
    }

    #[test]
    fn a_truncation_hides_synced_bytes_until_the_file_grows_again_as_zeros() {
        let (file, mut content) = content_over(b"0123456789");
        content.set_len(3).unwrap();
        content.set_len(6).unwrap();
        assert_eq!(all(&content), b"012\0\0\0");
        assert_eq!(std::fs::read(file.path()).unwrap(), b"0123456789");
        content.write(4, b"x").unwrap();
        content.sync().unwrap();
        assert_eq!(std::fs::read(file.path()).unwrap(), b"012\0x\0");
    }

    #[test]
    fn shrinking_cuts_unsynced_writes() {
        let (_file, mut content) = content_over(b"");
        content.write(0, b"abcdef").unwrap();
        content.write(10, b"gh").unwrap();
        content.set_len(4).unwrap();
        content.set_len(12).unwrap();
        let mut expected = b"abcd".to_vec();
        expected.extend_from_slice(&[0; 8]);
        assert_eq!(all(&content), expected);
    }

    #[test]
    fn sizes_past_the_limit_are_refused() {
        let (_file, mut content) = content_over(b"");
        assert_eq!(content.write(u64::MAX - 1, b"abc"), Err(TooLarge));
        assert_eq!(content.write(MAX_FILE_BYTES, b"a"), Err(TooLarge));
        assert_eq!(content.set_len(MAX_FILE_BYTES + 1), Err(TooLarge));
        assert_eq!(content.read(u64::MAX, u32::MAX).unwrap(), b"");
    }
}
