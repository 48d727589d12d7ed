//! `RootLock`: one berth process per storage root while the root's dedupe cache is embedded
//! (LMDB in `<root>/.berth/`). Two servers, or a server and an offline `berth gc`, on one
//! root would each run a collector and a dedupe pass that take only their own process's
//! locks (issue 11: an offline gc deleted while a registry served the root on another
//! port). The lock is an exclusive `flock(2)` on `<root>/.berth/lock`, held for the life of
//! the process and released by the kernel when it ends, however it ends; the file names the
//! holder, so a refusal can say who. With a shared cache (`remoteCache`, issue 14) several
//! processes serve one root, their sweeps taking leases in the cache, and no lock is taken.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside a root's berth directory.
const LOCK_FILE: &str = "lock";

/// An exclusive hold on a storage root; released on drop or when the process ends.
#[derive(Debug)]
pub struct RootLock {
    _file: File,
}

/// Why a root could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("{root} is in use by {holder}; stop it first (one berth per root)")]
    Held {
        /// The root.
        root: PathBuf,
        /// What the holder wrote about itself.
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl RootLock {
    /// Locks `root` (whose berth directory is `berth_dir`) for `holder`, a description such
    /// as `berth serve (pid 12, http 127.0.0.1:5000)`.
    pub fn take(root: &Path, berth_dir: &Path, holder: &str) -> Result<RootLock, LockError> {
        let path = berth_dir.join(LOCK_FILE);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(berth_dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor `file` keeps open; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(e));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another berth process".to_string(),
                named => named.to_string(),
            };
            return Err(LockError::Held {
                root: root.to_path_buf(),
                holder,
            });
        }
        let described = (|| {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{holder}")
        })();
        described.map_err(io)?;
        Ok(RootLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_name_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let berth_dir = dir.path().join(".berth");
        let first = RootLock::take(dir.path(), &berth_dir, "berth serve (pid 1)").unwrap();
        match RootLock::take(dir.path(), &berth_dir, "berth gc (pid 2)") {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, "berth serve (pid 1)"),
            other => panic!("{other:?}"),
        }
        drop(first);
        RootLock::take(dir.path(), &berth_dir, "berth gc (pid 2)").unwrap();
    }
}
