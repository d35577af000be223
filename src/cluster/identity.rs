//! A data dir's identity: `node.json` names the node that owns the dir and a
//! random incarnation id chosen when the dir was created, and `rejoin.json`
//! marks a dir that was created empty and has not yet caught up with the
//! cluster.
//!
//! Why: Raft's safety rests on voters remembering what they acknowledged. A node
//! whose data dir was wiped remembers nothing, so until it has caught up again
//! it must not vote (see `rejoin.rs`). It can only know it forgot something if
//! the fact that its dir is new survives a restart: the marker is written before
//! anything else in a new dir and removed only once every Raft group the node
//! hosts has caught up.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::raft::NodeId;

/// The version of `node.json` and `rejoin.json` this release writes and reads.
const FORMAT: u32 = 1;
const IDENTITY_FILE: &str = "node.json";
const REJOIN_FILE: &str = "rejoin.json";
/// The RocksDB directory inside the data dir (`storage::Store::open`): present in
/// every dir a node has ever run on, including those from before `node.json`.
const DATABASE_DIR: &str = "db";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: unreadable node identity: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path} belongs to node {found}, not to node {expected}: refusing to start on another node's data")]
    OtherNode {
        path: PathBuf,
        found: NodeId,
        expected: NodeId,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct IdentityFile {
    format: u32,
    node_id: NodeId,
    incarnation: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct RejoinFile {
    format: u32,
    incarnation: String,
}

/// Who this data dir belongs to, and whether it still has to catch up after being created empty.
#[derive(Debug, Clone)]
pub struct Identity {
    pub incarnation: String,
    /// The dir was created empty and some Raft group has not caught up since.
    pub rejoining: bool,
    data_dir: PathBuf,
}

impl Identity {
    /// Reads the identity of `data_dir`, creating it for a new dir. Runs before
    /// the database is opened, which is what tells a new dir from an old one.
    pub fn open(data_dir: &Path, node_id: NodeId) -> Result<Identity, IdentityError> {
        let path = data_dir.join(IDENTITY_FILE);
        let existing = match fs::read(&path) {
            Ok(bytes) => Some(parse::<IdentityFile>(&path, &bytes)?),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(IdentityError::Io { path, source }),
        };
        let identity = match existing {
            Some(file) if file.node_id != node_id => {
                return Err(IdentityError::OtherNode {
                    path,
                    found: file.node_id,
                    expected: node_id,
                })
            }
            Some(file) => file,
            None => {
                let created_empty = !data_dir.join(DATABASE_DIR).exists();
                let file = IdentityFile {
                    format: FORMAT,
                    node_id,
                    incarnation: uuid::Uuid::new_v4().to_string(),
                };
                fs::create_dir_all(data_dir).map_err(|source| IdentityError::Io {
                    path: data_dir.to_path_buf(),
                    source,
                })?;
                // The marker first: a crash between the two writes leaves a dir
                // without node.json, which the next start treats as new again.
                // The other order could leave a new dir that looks caught up.
                if created_empty {
                    let marker = RejoinFile {
                        format: FORMAT,
                        incarnation: file.incarnation.clone(),
                    };
                    write_durably(&data_dir.join(REJOIN_FILE), &marker)?;
                }
                write_durably(&path, &file)?;
                tracing::info!(
                    node_id,
                    incarnation = %file.incarnation,
                    created_empty,
                    "data dir identity written"
                );
                file
            }
        };
        let marker = data_dir.join(REJOIN_FILE);
        let rejoining = match fs::read(&marker) {
            Ok(bytes) => {
                parse::<RejoinFile>(&marker, &bytes)?;
                true
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
            Err(source) => return Err(IdentityError::Io { path: marker, source }),
        };
        Ok(Identity {
            incarnation: identity.incarnation,
            rejoining,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Removes the rejoin marker, durably: every group has caught up, or the
    /// cluster turned out to be new, so this node's votes are safe from now on.
    pub fn caught_up(&self) -> Result<(), IdentityError> {
        let marker = self.data_dir.join(REJOIN_FILE);
        match fs::remove_file(&marker) {
            Ok(()) => sync_dir(&self.data_dir),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(IdentityError::Io { path: marker, source }),
        }
    }
}

fn parse<T: serde::de::DeserializeOwned + HasFormat>(path: &Path, bytes: &[u8]) -> Result<T, IdentityError> {
    let invalid = |reason: String| IdentityError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let value: T = serde_json::from_slice(bytes).map_err(|err| invalid(err.to_string()))?;
    if value.format() != FORMAT {
        return Err(invalid(format!(
            "format {} (this release reads format {FORMAT})",
            value.format()
        )));
    }
    Ok(value)
}

trait HasFormat {
    fn format(&self) -> u32;
}

impl HasFormat for IdentityFile {
    fn format(&self) -> u32 {
        self.format
    }
}

impl HasFormat for RejoinFile {
    fn format(&self) -> u32 {
        self.format
    }
}

/// Writes `value` to a temporary file, fsyncs it, renames it over `path` and
/// fsyncs the directory, so `path` holds either nothing or the whole value.
fn write_durably<T: Serialize>(path: &Path, value: &T) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(value).map_err(|err| IdentityError::Invalid {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })?;
    let temporary = path.with_extension("json.tmp");
    let mut file = File::create(&temporary).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&temporary, path).map_err(io)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| IdentityError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_dir_is_rejoining_until_caught_up_and_keeps_its_incarnation() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = Identity::open(&data, 3).unwrap();
        assert!(first.rejoining);
        // A restart before catching up is still rejoining, with the same incarnation.
        let again = Identity::open(&data, 3).unwrap();
        assert!(again.rejoining);
        assert_eq!(again.incarnation, first.incarnation);
        again.caught_up().unwrap();
        assert!(!Identity::open(&data, 3).unwrap().rejoining);
    }

    #[test]
    fn a_dir_from_before_identity_files_is_not_rejoining() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(DATABASE_DIR)).unwrap();
        let identity = Identity::open(dir.path(), 1).unwrap();
        assert!(!identity.rejoining);
        assert!(dir.path().join(IDENTITY_FILE).exists());
    }

    #[test]
    fn another_nodes_dir_or_an_unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Identity::open(dir.path(), 1).unwrap();
        assert!(matches!(
            Identity::open(dir.path(), 2),
            Err(IdentityError::OtherNode {
                found: 1,
                expected: 2,
                ..
            })
        ));
        fs::write(
            dir.path().join(IDENTITY_FILE),
            br#"{"format":2,"node_id":1,"incarnation":"x"}"#,
        )
        .unwrap();
        assert!(matches!(
            Identity::open(dir.path(), 1),
            Err(IdentityError::Invalid { .. })
        ));
        fs::write(dir.path().join(IDENTITY_FILE), b"garbage").unwrap();
        assert!(matches!(
            Identity::open(dir.path(), 1),
            Err(IdentityError::Invalid { .. })
        ));
    }
}
