//! The FUSE requests, answered from the [`Tree`]. Every request takes the one
//! lock, so requests apply in the order the kernel sends them.

use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};

use crate::tree::{AttrChange, Tree};

/// How long the kernel may cache attributes and names: every change goes
/// through this process, so the caches stay right.
const CACHE_TTL: Duration = Duration::from_secs(1);

pub struct PowercutFs {
    tree: Arc<Mutex<Tree>>,
}

impl PowercutFs {
    pub fn new(tree: Arc<Mutex<Tree>>) -> Self {
        PowercutFs { tree }
    }

    fn tree(&self) -> MutexGuard<'_, Tree> {
        lock(&self.tree)
    }
}

pub fn lock(tree: &Mutex<Tree>) -> MutexGuard<'_, Tree> {
    // The tree holds no invariant a panicking request could leave half done
    // that a later request would trust, so a poisoned lock is usable.
    tree.lock().unwrap_or_else(PoisonError::into_inner)
}

fn perm_of(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

fn time_of(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn reply_entry(reply: ReplyEntry, result: crate::tree::Result<fuser::FileAttr>) {
    match result {
        Ok(attr) => reply.entry(&CACHE_TTL, &attr, Generation(0)),
        Err(err) => reply.error(err),
    }
}

fn reply_empty(reply: ReplyEmpty, result: crate::tree::Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(err) => reply.error(err),
    }
}

impl Filesystem for PowercutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.tree().lookup(parent.0, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.tree().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree().attr(ino.0) {
            Ok(attr) => reply.attr(&CACHE_TTL, &attr),
            Err(err) => reply.error(err),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = AttrChange {
            perm: mode.map(|mode| perm_of(mode, 0)),
            uid,
            gid,
            size,
            atime: atime.map(time_of),
            mtime: mtime.map(time_of),
        };
        match self.tree().set_attr(ino.0, change) {
            Ok(attr) => reply.attr(&CACHE_TTL, &attr),
            Err(err) => reply.error(err),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        reply_entry(
            reply,
            self.tree()
                .create(parent.0, name, perm_of(mode, umask), req.uid(), req.gid()),
        );
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        reply_entry(
            reply,
            self.tree()
                .mkdir(parent.0, name, perm_of(mode, umask), req.uid(), req.gid()),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.tree().unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.tree().rmdir(parent.0, name));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        reply_empty(
            reply,
            self.tree().rename(parent.0, name, newparent.0, newname, no_replace),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut tree = self.tree();
        let opened = tree.open(ino.0).and_then(|()| {
            if flags.0 & libc::O_TRUNC != 0 {
                tree.set_attr(
                    ino.0,
                    AttrChange {
                        size: Some(0),
                        ..AttrChange::default()
                    },
                )?;
            }
            Ok(())
        });
        match opened {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(err) => reply.error(err),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.tree().read(ino.0, offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(err) => reply.error(err),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Ok(written) = u32::try_from(data.len()) else {
            return reply.error(Errno::EINVAL);
        };
        match self.tree().write(ino.0, offset, data) {
            Ok(()) => reply.written(written),
            Err(err) => reply.error(err),
        }
    }

    /// close(2) makes nothing durable.
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.tree().release(ino.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply_empty(reply, self.tree().sync_file(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.tree().open(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(err) => reply.error(err),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let listing = match self.tree().list(ino.0) {
            Ok(listing) => listing,
            Err(err) => return reply.error(err),
        };
        // An entry's offset is where the next readdir continues: its position + 1.
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (position, (child, kind, name)) in listing.into_iter().enumerate().skip(skip) {
            if reply.add(INodeNo(child), position as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.tree().release(ino.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let result = self.tree().sync_dir();
        if let Err(err) = result {
            eprintln!("powercut-fs: committing namespace changes failed: {err:?}");
        }
        reply_empty(reply, result);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.tree().statfs() {
            Ok(stats) => reply.statfs(
                stats.blocks(),
                stats.blocks_free(),
                stats.blocks_available(),
                stats.files(),
                stats.files_free(),
                stats.block_size() as u32,
                stats.name_max() as u32,
                stats.fragment_size() as u32,
            ),
            Err(err) => reply.error(err),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permissions are checked by the kernel (default_permissions).
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut tree = self.tree();
        let created = tree
            .create(parent.0, name, perm_of(mode, umask), req.uid(), req.gid())
            .and_then(|attr| tree.open(attr.ino.0).map(|()| attr));
        match created {
            Ok(attr) => reply.created(&CACHE_TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(err) => reply.error(err),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.tree().allocate(ino.0, offset, length, mode));
    }
}
