//! `powercut-fs BACKING MOUNTPOINT`: mounts at MOUNTPOINT a view of the
//! directory BACKING in which writes stay in memory until they are fsynced
//! (the rules are in `tree.rs`). SIGTERM or SIGINT is a power cut: everything
//! not synced is thrown away, the filesystem is unmounted and the process
//! exits, leaving BACKING with exactly the synced state for the next mount.
//! A SIGKILL cuts power as well, but leaves a dead mount behind for
//! `fusermount3 -u -z MOUNTPOINT`; the next mount throws away the unsynced
//! files it left in BACKING.
//!
//! Runs in the foreground. Prints `mounted` once the mount serves requests,
//! and at a cut what it threw away.

mod content;
mod fs;
mod tree;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use fuser::{Config, MountOption};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{SigSet, Signal};

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [backing, mountpoint] = args.as_slice() else {
        eprintln!("usage: powercut-fs BACKING MOUNTPOINT");
        return ExitCode::from(2);
    };
    match run(backing, mountpoint) {
        Ok(signal) => {
            eprintln!("powercut-fs: {signal}: power cut, unsynced changes dropped, unmounted");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("powercut-fs: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(backing: &Path, mountpoint: &Path) -> std::io::Result<Signal> {
    // Blocked before any thread starts so that only the wait below takes them.
    let mut cut_signals = SigSet::empty();
    cut_signals.add(Signal::SIGTERM);
    cut_signals.add(Signal::SIGINT);
    cut_signals.thread_block()?;
    // One handle per backing file and directory stays open.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;

    let tree = tree::Tree::load(backing)
        .map_err(|err| std::io::Error::other(format!("reading {}: {err}", backing.display())))?;
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("powercut".into()), MountOption::DefaultPermissions];
    let tree = Arc::new(Mutex::new(tree));
    let session = fuser::spawn_mount(fs::PowercutFs::new(Arc::clone(&tree)), mountpoint, &config)
        .map_err(|err| std::io::Error::other(format!("mounting {}: {err}", mountpoint.display())))?;
    println!("mounted");

    let signal = cut_signals.wait()?;
    let dropped = fs::lock(&tree).unsynced();
    println!(
        "cut: dropped {} unsynced bytes in {} files and {} namespace changes",
        dropped.bytes, dropped.files, dropped.changes
    );
    session.umount_and_join()?;
    std::fs::remove_dir_all(backing.join(tree::STAGING))?;
    Ok(signal)
}
