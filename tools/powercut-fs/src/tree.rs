//! The files and directories the mount shows, and the rule for what of them
//! survives a cut.
//!
//! The backing directory holds exactly the synced state at every moment:
//! - a file's bytes and size reach its backing file only through fsync or
//!   fdatasync of that file ([`Content`]);
//! - a namespace change (create, mkdir, unlink, rmdir, rename) is queued, and
//!   the queue is replayed in order on the backing directory when any
//!   directory is fsynced, as a journaling filesystem commits its one
//!   journal. Until then a new file lives under a number in the staging
//!   directory, where its synced bytes wait for its name.
//!
//! So a cut, which only throws away this process's memory and the staging
//! directory, leaves the namespace of the last directory fsync with, in each
//! file, the bytes of that file's last fsync. An fsync of a file does not make
//! its name durable (fsync(2): "an explicit fsync() on a file descriptor for
//! the directory is also needed").

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo};
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::content::{Content, TooLarge};

pub type Ino = u64;
pub const ROOT: Ino = 1;
/// Under the backing root: files whose names are not committed yet. Emptied at
/// every start, and hidden from (and refused as a name in) the mount's root.
pub const STAGING: &str = ".powercut-unsynced";
const MAX_NAME_BYTES: usize = 255;

pub type Result<T> = std::result::Result<T, Errno>;

fn errno(err: nix::errno::Errno) -> Errno {
    Errno::from_i32(err as i32)
}

enum Node {
    File(Content),
    Dir(Dir),
}

struct Dir {
    entries: BTreeMap<OsString, Ino>,
    /// The backing directory, once the change that made it is committed.
    backing: Option<File>,
}

struct Inode {
    node: Node,
    /// The directory that lists it (itself for the root).
    parent: Ino,
    /// Listed in a directory of the mount.
    linked: bool,
    /// References the kernel holds (lookups not yet forgotten) and open handles:
    /// an unlinked inode lives on while either is non-zero.
    lookups: u64,
    open: u64,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
}

impl Inode {
    fn new(node: Node, parent: Ino, perm: u16, uid: u32, gid: u32) -> Inode {
        let now = SystemTime::now();
        Inode {
            node,
            parent,
            linked: true,
            lookups: 0,
            open: 0,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self.node, Node::Dir(_))
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

/// A namespace change not committed yet.
enum Change {
    /// Moves staging file `ino` to its name.
    Create {
        parent: Ino,
        name: OsString,
        ino: Ino,
    },
    Mkdir {
        parent: Ino,
        name: OsString,
        ino: Ino,
        perm: u16,
    },
    Remove {
        parent: Ino,
        name: OsString,
        dir: bool,
    },
    Rename {
        from: Ino,
        from_name: OsString,
        to: Ino,
        to_name: OsString,
    },
}

/// Attribute changes asked for by setattr.
#[derive(Default)]
pub struct AttrChange {
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

/// Files with unsynced bytes or size, those bytes, and queued namespace changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Unsynced {
    pub files: usize,
    pub bytes: u64,
    pub changes: usize,
}

pub struct Tree {
    inodes: HashMap<Ino, Inode>,
    next_ino: Ino,
    queued: Vec<Change>,
    staging: File,
}

impl Tree {
    /// The tree stored in `root`, after throwing away what the staging
    /// directory holds (the unsynced files of an earlier mount).
    pub fn load(root: &Path) -> io::Result<Tree> {
        let staging = root.join(STAGING);
        match fs::remove_dir_all(&staging) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        fs::create_dir(&staging)?;
        let mut tree = Tree {
            inodes: HashMap::new(),
            next_ino: ROOT + 1,
            queued: Vec::new(),
            staging: File::open(&staging)?,
        };
        let meta = fs::metadata(root)?;
        let dir = Dir {
            entries: BTreeMap::new(),
            backing: Some(File::open(root)?),
        };
        let mut inode = Inode::new(
            Node::Dir(dir),
            ROOT,
            meta.permissions().mode() as u16 & 0o7777,
            meta.uid(),
            meta.gid(),
        );
        inode.lookups = 1; // the kernel holds the root for the whole mount
        tree.inodes.insert(ROOT, inode);
        tree.load_dir(root, ROOT)?;
        Ok(tree)
    }

    fn load_dir(&mut self, path: &Path, dir_ino: Ino) -> io::Result<()> {
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let name = entry.file_name();
            if dir_ino == ROOT && name == STAGING {
                continue;
            }
            let path = entry.path();
            let meta = fs::symlink_metadata(&path)?;
            let node = if meta.is_dir() {
                Node::Dir(Dir {
                    entries: BTreeMap::new(),
                    backing: Some(File::open(&path)?),
                })
            } else if meta.is_file() {
                Node::File(Content::new(File::options().read(true).write(true).open(&path)?)?)
            } else {
                return Err(io::Error::other(format!(
                    "{}: only regular files and directories are supported",
                    path.display()
                )));
            };
            let ino = self.allocate_ino();
            let mut inode = Inode::new(
                node,
                dir_ino,
                meta.permissions().mode() as u16 & 0o7777,
                meta.uid(),
                meta.gid(),
            );
            inode.mtime = meta.modified()?;
            inode.atime = meta.accessed()?;
            inode.ctime = inode.mtime;
            let is_dir = inode.is_dir();
            self.inodes.insert(ino, inode);
            if let Some(Node::Dir(dir)) = self.inodes.get_mut(&dir_ino).map(|inode| &mut inode.node) {
                dir.entries.insert(name, ino);
            }
            if is_dir {
                self.load_dir(&path, ino)?;
            }
        }
        Ok(())
    }

    fn allocate_ino(&mut self) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    fn inode(&self, ino: Ino) -> Result<&Inode> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: Ino) -> Result<&Dir> {
        match &self.inode(ino)?.node {
            Node::Dir(dir) => Ok(dir),
            Node::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut Dir> {
        match &mut self.inode_mut(ino)?.node {
            Node::Dir(dir) => Ok(dir),
            Node::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn content(&self, ino: Ino) -> Result<&Content> {
        match &self.inode(ino)?.node {
            Node::File(content) => Ok(content),
            Node::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn content_mut(&mut self, ino: Ino) -> Result<&mut Content> {
        match &mut self.inode_mut(ino)?.node {
            Node::File(content) => Ok(content),
            Node::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn entry(&self, parent: Ino, name: &OsStr) -> Result<Ino> {
        self.dir(parent)?.entries.get(name).copied().ok_or(Errno::ENOENT)
    }

    /// Refuses a name that cannot be added to `parent`.
    fn check_new_name(&self, parent: Ino, name: &OsStr) -> Result<()> {
        check_name(parent, name)?;
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        Ok(())
    }

    pub fn attr(&self, ino: Ino) -> Result<FileAttr> {
        let inode = self.inode(ino)?;
        let (kind, size, nlink) = match &inode.node {
            Node::File(content) => (FileType::RegularFile, content.len(), u32::from(inode.linked)),
            Node::Dir(_) => (FileType::Directory, 4096, if inode.linked { 2 } else { 0 }),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
            crtime: inode.ctime,
            kind,
            perm: inode.perm,
            nlink,
            uid: inode.uid,
            gid: inode.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    /// The entry `name` of `parent`; the kernel now holds one more reference to it.
    pub fn lookup(&mut self, parent: Ino, name: &OsStr) -> Result<FileAttr> {
        let ino = self.entry(parent, name)?;
        self.inode_mut(ino)?.lookups += 1;
        self.attr(ino)
    }

    pub fn forget(&mut self, ino: Ino, lookups: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.lookups = inode.lookups.saturating_sub(lookups);
        }
        self.drop_if_unused(ino);
    }

    pub fn open(&mut self, ino: Ino) -> Result<()> {
        self.inode_mut(ino)?.open += 1;
        Ok(())
    }

    pub fn release(&mut self, ino: Ino) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.open = inode.open.saturating_sub(1);
        }
        self.drop_if_unused(ino);
    }

    /// A new empty file `name` in `parent`, looked up once (as create and mknod reply).
    pub fn create(&mut self, parent: Ino, name: &OsStr, perm: u16, uid: u32, gid: u32) -> Result<FileAttr> {
        self.check_new_name(parent, name)?;
        let ino = self.allocate_ino();
        let fd = openat(
            &self.staging,
            ino.to_string().as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(u32::from(perm)),
        )
        .map_err(errno)?;
        let content = Content::new(File::from(fd))?;
        self.add(
            parent,
            name,
            ino,
            Inode::new(Node::File(content), parent, perm, uid, gid),
        );
        self.queued.push(Change::Create {
            parent,
            name: name.to_owned(),
            ino,
        });
        self.attr(ino)
    }

    pub fn mkdir(&mut self, parent: Ino, name: &OsStr, perm: u16, uid: u32, gid: u32) -> Result<FileAttr> {
        self.check_new_name(parent, name)?;
        let ino = self.allocate_ino();
        let dir = Dir {
            entries: BTreeMap::new(),
            backing: None,
        };
        self.add(parent, name, ino, Inode::new(Node::Dir(dir), parent, perm, uid, gid));
        self.queued.push(Change::Mkdir {
            parent,
            name: name.to_owned(),
            ino,
            perm,
        });
        self.attr(ino)
    }

    fn add(&mut self, parent: Ino, name: &OsStr, ino: Ino, mut inode: Inode) {
        inode.lookups = 1;
        self.inodes.insert(ino, inode);
        if let Some(parent) = self.inodes.get_mut(&parent) {
            parent.touch();
            if let Node::Dir(dir) = &mut parent.node {
                dir.entries.insert(name.to_owned(), ino);
            }
        }
    }

    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> Result<()> {
        let ino = self.entry(parent, name)?;
        if self.inode(ino)?.is_dir() {
            return Err(Errno::EISDIR);
        }
        self.remove(parent, name, ino, false)
    }

    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> Result<()> {
        let ino = self.entry(parent, name)?;
        if !self.dir(ino)?.entries.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.remove(parent, name, ino, true)
    }

    fn remove(&mut self, parent: Ino, name: &OsStr, ino: Ino, dir: bool) -> Result<()> {
        self.dir_mut(parent)?.entries.remove(name);
        self.inode_mut(parent)?.touch();
        self.unlinked(ino);
        self.queued.push(Change::Remove {
            parent,
            name: name.to_owned(),
            dir,
        });
        Ok(())
    }

    fn unlinked(&mut self, ino: Ino) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.linked = false;
            inode.ctime = SystemTime::now();
        }
        self.drop_if_unused(ino);
    }

    /// rename(2) without RENAME_EXCHANGE (refused with EINVAL).
    pub fn rename(&mut self, from: Ino, from_name: &OsStr, to: Ino, to_name: &OsStr, no_replace: bool) -> Result<()> {
        let ino = self.entry(from, from_name)?;
        check_name(to, to_name)?;
        let moving_dir = self.inode(ino)?.is_dir();
        let replaced = self.dir(to)?.entries.get(to_name).copied();
        if replaced == Some(ino) {
            return Ok(());
        }
        if moving_dir && self.is_within(to, ino)? {
            return Err(Errno::EINVAL);
        }
        if let Some(old) = replaced {
            if no_replace {
                return Err(Errno::EEXIST);
            }
            match (moving_dir, &self.inode(old)?.node) {
                (true, Node::File(_)) => return Err(Errno::ENOTDIR),
                (false, Node::Dir(_)) => return Err(Errno::EISDIR),
                (true, Node::Dir(dir)) if !dir.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        self.dir_mut(from)?.entries.remove(from_name);
        self.dir_mut(to)?.entries.insert(to_name.to_owned(), ino);
        self.inode_mut(from)?.touch();
        self.inode_mut(to)?.touch();
        let inode = self.inode_mut(ino)?;
        inode.parent = to;
        inode.ctime = SystemTime::now();
        if let Some(old) = replaced {
            self.unlinked(old);
        }
        self.queued.push(Change::Rename {
            from,
            from_name: from_name.to_owned(),
            to,
            to_name: to_name.to_owned(),
        });
        Ok(())
    }

    /// Whether directory `ino` is `dir` or lies inside it.
    fn is_within(&self, mut ino: Ino, dir: Ino) -> Result<bool> {
        loop {
            if ino == dir {
                return Ok(true);
            }
            if ino == ROOT {
                return Ok(false);
            }
            ino = self.inode(ino)?.parent;
        }
    }

    /// `(inode, kind, name)` of every entry, "." and ".." first.
    pub fn list(&self, ino: Ino) -> Result<Vec<(Ino, FileType, OsString)>> {
        let dir = self.dir(ino)?;
        let mut listing = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (self.inode(ino)?.parent, FileType::Directory, OsString::from("..")),
        ];
        for (name, child) in &dir.entries {
            let kind = if self.inode(*child)?.is_dir() {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            listing.push((*child, kind, name.clone()));
        }
        Ok(listing)
    }

    pub fn read(&mut self, ino: Ino, offset: u64, size: u32) -> Result<Vec<u8>> {
        let bytes = self.content(ino)?.read(offset, size)?;
        self.inode_mut(ino)?.atime = SystemTime::now();
        Ok(bytes)
    }

    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<()> {
        self.content_mut(ino)?.write(offset, data).map_err(too_large)?;
        self.inode_mut(ino)?.touch();
        Ok(())
    }

    pub fn set_attr(&mut self, ino: Ino, change: AttrChange) -> Result<FileAttr> {
        if let Some(size) = change.size {
            self.content_mut(ino)?.set_len(size).map_err(too_large)?;
        }
        let inode = self.inode_mut(ino)?;
        inode.ctime = SystemTime::now();
        if change.size.is_some() {
            inode.mtime = inode.ctime;
        }
        inode.perm = change.perm.map_or(inode.perm, |perm| perm & 0o7777);
        inode.uid = change.uid.unwrap_or(inode.uid);
        inode.gid = change.gid.unwrap_or(inode.gid);
        inode.atime = change.atime.unwrap_or(inode.atime);
        inode.mtime = change.mtime.unwrap_or(inode.mtime);
        self.attr(ino)
    }

    /// fallocate(2): reserving space is meaningless here, so only the size
    /// change of mode 0 has an effect; punching and collapsing are refused.
    pub fn allocate(&mut self, ino: Ino, offset: u64, length: u64, mode: i32) -> Result<()> {
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        let content = self.content_mut(ino)?;
        match mode {
            0 if end > content.len() => content.set_len(end).map_err(too_large),
            0 | libc::FALLOC_FL_KEEP_SIZE => Ok(()),
            _ => Err(Errno::EOPNOTSUPP),
        }
    }

    /// fsync/fdatasync of a file: its bytes, size and mode become durable.
    pub fn sync_file(&mut self, ino: Ino) -> Result<()> {
        let perm = self.inode(ino)?.perm;
        let content = self.content_mut(ino)?;
        content.sync()?;
        content
            .backing()
            .set_permissions(fs::Permissions::from_mode(u32::from(perm)))?;
        Ok(())
    }

    /// fsync of a directory: every namespace change so far becomes durable.
    pub fn sync_dir(&mut self) -> Result<()> {
        let queued = std::mem::take(&mut self.queued);
        for change in queued {
            self.commit(change)?;
        }
        let unused: Vec<Ino> = self.inodes.keys().copied().collect();
        for ino in unused {
            self.drop_if_unused(ino);
        }
        Ok(())
    }

    fn commit(&mut self, change: Change) -> Result<()> {
        match change {
            Change::Create { parent, name, ino } => renameat(
                &self.staging,
                ino.to_string().as_str(),
                self.backing_dir(parent)?,
                name.as_os_str(),
            )
            .map_err(errno),
            Change::Mkdir {
                parent,
                name,
                ino,
                perm,
            } => {
                let parent = self.backing_dir(parent)?;
                let mode = Mode::from_bits_truncate(u32::from(perm));
                mkdirat(parent, name.as_os_str(), mode).map_err(errno)?;
                let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
                let fd: OwnedFd = openat(parent, name.as_os_str(), flags, Mode::empty()).map_err(errno)?;
                self.dir_mut(ino)?.backing = Some(File::from(fd));
                Ok(())
            }
            Change::Remove { parent, name, dir } => {
                let flag = if dir {
                    UnlinkatFlags::RemoveDir
                } else {
                    UnlinkatFlags::NoRemoveDir
                };
                unlinkat(self.backing_dir(parent)?, name.as_os_str(), flag).map_err(errno)
            }
            Change::Rename {
                from,
                from_name,
                to,
                to_name,
            } => renameat(
                self.backing_dir(from)?,
                from_name.as_os_str(),
                self.backing_dir(to)?,
                to_name.as_os_str(),
            )
            .map_err(errno),
        }
    }

    /// The backing directory of `ino`. Changes commit in the order they were
    /// made, so a directory is always in place before a change inside it.
    fn backing_dir(&self, ino: Ino) -> Result<&File> {
        self.dir(ino)?.backing.as_ref().ok_or(Errno::EIO)
    }

    /// Forgets an inode no name, handle or kernel reference leads to any more,
    /// once no queued change needs its handles.
    fn drop_if_unused(&mut self, ino: Ino) {
        let unused = self
            .inodes
            .get(&ino)
            .is_some_and(|inode| !inode.linked && inode.lookups == 0 && inode.open == 0);
        if unused && self.queued.is_empty() {
            self.inodes.remove(&ino);
        }
    }

    /// What a cut now would throw away.
    pub fn unsynced(&self) -> Unsynced {
        let mut unsynced = Unsynced {
            changes: self.queued.len(),
            ..Unsynced::default()
        };
        for inode in self.inodes.values() {
            if let Node::File(content) = &inode.node {
                if let Some(bytes) = content.unsynced_bytes() {
                    unsynced.files += 1;
                    unsynced.bytes += bytes;
                }
            }
        }
        unsynced
    }

    pub fn statfs(&self) -> Result<nix::sys::statvfs::Statvfs> {
        nix::sys::statvfs::fstatvfs(&self.staging).map_err(errno)
    }
}

fn check_name(parent: Ino, name: &OsStr) -> Result<()> {
    if name.len() > MAX_NAME_BYTES {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    if parent == ROOT && name == STAGING {
        return Err(Errno::EPERM);
    }
    Ok(())
}

fn too_large(_: TooLarge) -> Errno {
    Errno::EFBIG
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;

    /// Every file under `root` (the staging directory left out) and its bytes;
    /// directories map to `None`.
    fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let relative = path.strip_prefix(root).unwrap().to_path_buf();
                if relative == Path::new(STAGING) {
                    continue;
                }
                if path.is_dir() {
                    out.insert(relative, None);
                    walk(root, &path, out);
                } else {
                    out.insert(relative, Some(fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, &mut out);
        out
    }

    fn file(path: &str, bytes: &[u8]) -> (PathBuf, Option<Vec<u8>>) {
        (PathBuf::from(path), Some(bytes.to_vec()))
    }

    fn dir(path: &str) -> (PathBuf, Option<Vec<u8>>) {
        (PathBuf::from(path), None)
    }

    /// A cut: the process's memory is gone; the next mount loads the backing directory.
    fn cut(tree: Tree, root: &Path) -> Tree {
        drop(tree);
        Tree::load(root).unwrap()
    }

    fn create_with(tree: &mut Tree, parent: Ino, name: &str, bytes: &[u8]) -> Ino {
        let ino = tree.create(parent, OsStr::new(name), 0o644, 0, 0).unwrap().ino.0;
        tree.write(ino, 0, bytes).unwrap();
        ino
    }

    #[test]
    fn a_cut_keeps_only_what_file_and_directory_fsyncs_made_durable() {
        let root = tempfile::tempdir().unwrap();
        let mut tree = Tree::load(root.path()).unwrap();
        let d = tree.mkdir(ROOT, OsStr::new("d"), 0o755, 0, 0).unwrap().ino.0;
        let synced = create_with(&mut tree, d, "synced", b"abc");
        tree.sync_file(synced).unwrap();
        let unsynced = create_with(&mut tree, d, "unsynced", b"xyz");
        tree.sync_dir().unwrap();
        // After the directory fsync: both names, but only the fsynced bytes.
        tree.write(synced, 3, b"def").unwrap();
        let nameless = create_with(&mut tree, ROOT, "nameless", b"123");
        tree.sync_file(nameless).unwrap();
        assert_eq!(tree.read(synced, 0, 100).unwrap(), b"abcdef");
        assert_eq!(tree.read(unsynced, 0, 100).unwrap(), b"xyz");
        let expected = Unsynced {
            files: 2,
            bytes: 6,
            changes: 1,
        };
        assert_eq!(
            tree.unsynced(),
            expected,
            "3 bytes each in synced and unsynced, nameless's create"
        );

        let tree = cut(tree, root.path());
        let expected = BTreeMap::from([dir("d"), file("d/synced", b"abc"), file("d/unsynced", b"")]);
        assert_eq!(snapshot(root.path()), expected);
        assert_eq!(tree.list(ROOT).unwrap().len(), 3, "., .. and d");
    }

    #[test]
    fn a_replacing_rename_survives_only_with_the_directory_fsync() {
        let root = tempfile::tempdir().unwrap();
        let mut tree = Tree::load(root.path()).unwrap();
        let old = create_with(&mut tree, ROOT, "current", b"old");
        tree.sync_file(old).unwrap();
        tree.sync_dir().unwrap();
        let new = create_with(&mut tree, ROOT, "current.tmp", b"new");
        tree.sync_file(new).unwrap();
        tree.rename(ROOT, OsStr::new("current.tmp"), ROOT, OsStr::new("current"), false)
            .unwrap();
        // The replaced file stays readable through its open handle.
        tree.open(old).unwrap();
        assert_eq!(tree.read(old, 0, 10).unwrap(), b"old");

        let mut tree = cut(tree, root.path());
        assert_eq!(snapshot(root.path()), BTreeMap::from([file("current", b"old")]));

        let new = create_with(&mut tree, ROOT, "current.tmp", b"new");
        tree.sync_file(new).unwrap();
        tree.rename(ROOT, OsStr::new("current.tmp"), ROOT, OsStr::new("current"), false)
            .unwrap();
        tree.sync_dir().unwrap();
        let _tree = cut(tree, root.path());
        assert_eq!(snapshot(root.path()), BTreeMap::from([file("current", b"new")]));
    }

    #[test]
    fn namespace_changes_commit_in_order_across_directories() {
        let root = tempfile::tempdir().unwrap();
        let mut tree = Tree::load(root.path()).unwrap();
        let a = tree.mkdir(ROOT, OsStr::new("a"), 0o755, 0, 0).unwrap().ino.0;
        let b = tree.mkdir(a, OsStr::new("b"), 0o755, 0, 0).unwrap().ino.0;
        let f = create_with(&mut tree, b, "f", b"1");
        tree.sync_file(f).unwrap();
        tree.rename(ROOT, OsStr::new("a"), ROOT, OsStr::new("renamed"), false)
            .unwrap();
        create_with(&mut tree, b, "gone", b"2");
        tree.unlink(b, OsStr::new("gone")).unwrap();
        let c = tree.mkdir(ROOT, OsStr::new("c"), 0o755, 0, 0).unwrap().ino.0;
        tree.rmdir(ROOT, OsStr::new("c")).unwrap();
        tree.forget(c, 1);
        tree.sync_dir().unwrap();
        let expected = BTreeMap::from([dir("renamed"), dir("renamed/b"), file("renamed/b/f", b"1")]);
        let _tree = cut(tree, root.path());
        assert_eq!(snapshot(root.path()), expected);
    }

    #[test]
    fn a_truncation_is_durable_only_once_synced() {
        let root = tempfile::tempdir().unwrap();
        let mut tree = Tree::load(root.path()).unwrap();
        let f = create_with(&mut tree, ROOT, "log", b"0123456789");
        tree.sync_file(f).unwrap();
        tree.sync_dir().unwrap();
        tree.set_attr(
            f,
            AttrChange {
                size: Some(4),
                ..AttrChange::default()
            },
        )
        .unwrap();
        let mut tree = cut(tree, root.path());
        assert_eq!(snapshot(root.path()), BTreeMap::from([file("log", b"0123456789")]));
        let f = tree.lookup(ROOT, OsStr::new("log")).unwrap().ino.0;
        tree.set_attr(
            f,
            AttrChange {
                size: Some(4),
                ..AttrChange::default()
            },
        )
        .unwrap();
        tree.sync_file(f).unwrap();
        let _tree = cut(tree, root.path());
        assert_eq!(snapshot(root.path()), BTreeMap::from([file("log", b"0123")]));
    }

    #[test]
    fn bad_requests_get_an_errno() {
        let root = tempfile::tempdir().unwrap();
        let mut tree = Tree::load(root.path()).unwrap();
        let f = create_with(&mut tree, ROOT, "f", b"");
        let d = tree.mkdir(ROOT, OsStr::new("d"), 0o755, 0, 0).unwrap().ino.0;
        create_with(&mut tree, d, "inner", b"");
        assert_eq!(
            tree.create(ROOT, OsStr::new("f"), 0o644, 0, 0).err(),
            Some(Errno::EEXIST)
        );
        assert_eq!(
            tree.create(ROOT, OsStr::new(STAGING), 0o644, 0, 0).err(),
            Some(Errno::EPERM)
        );
        assert_eq!(tree.create(f, OsStr::new("x"), 0o644, 0, 0).err(), Some(Errno::ENOTDIR));
        assert_eq!(
            tree.mkdir(ROOT, OsStr::new(&"n".repeat(256)), 0o755, 0, 0).err(),
            Some(Errno::ENAMETOOLONG)
        );
        assert_eq!(tree.rmdir(ROOT, OsStr::new("d")).err(), Some(Errno::ENOTEMPTY));
        assert_eq!(tree.unlink(ROOT, OsStr::new("d")).err(), Some(Errno::EISDIR));
        assert_eq!(
            tree.rename(ROOT, OsStr::new("d"), d, OsStr::new("x"), false).err(),
            Some(Errno::EINVAL)
        );
        assert_eq!(
            tree.rename(ROOT, OsStr::new("f"), ROOT, OsStr::new("d"), false).err(),
            Some(Errno::EISDIR)
        );
        assert_eq!(
            tree.rename(ROOT, OsStr::new("f"), d, OsStr::new("inner"), true).err(),
            Some(Errno::EEXIST)
        );
        assert_eq!(tree.read(d, 0, 10).err(), Some(Errno::EISDIR));
        assert_eq!(tree.write(f, u64::MAX, b"x").err(), Some(Errno::EFBIG));
        assert_eq!(
            tree.allocate(f, 0, 10, libc::FALLOC_FL_PUNCH_HOLE).err(),
            Some(Errno::EOPNOTSUPP)
        );
        assert_eq!(tree.attr(9999).err(), Some(Errno::ENOENT));
        tree.sync_dir().unwrap();
    }
}
