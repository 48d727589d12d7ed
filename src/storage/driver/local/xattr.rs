//! Placeholders on local files (DESIGN decision 9): the holder a placeholder names is kept in
//! the user extended attribute `user.berth.holder` of its (empty) file. ext4 and tmpfs (Linux
//! 6.6 and later) keep user xattrs; where the root's filesystem refuses them, the driver
//! declares no `placeholders` capability (probed at open).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The attribute naming a placeholder's holder.
const HOLDER: &std::ffi::CStr = c"user.berth.holder";

/// Longest holder read back: a storage path is a repository name (at most 255 bytes in
/// berth's grammar) plus a blob's path under it.
const MAX_HOLDER: usize = 4096;

/// Sets the holder attribute of the open `file`.
pub(super) fn set_holder(file: &File, holder: &str) -> io::Result<()> {
    // SAFETY: the name is NUL-terminated and the value is `holder.len()` readable bytes,
    // both alive for the call; the descriptor is open.
    let rc = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            HOLDER.as_ptr(),
            holder.as_ptr().cast(),
            holder.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The holder attribute of the file at `path`: `None` when it has none (or the filesystem
/// keeps no user xattrs); `NotFound` when nothing is there.
pub(super) fn holder(path: &Path) -> io::Result<Option<String>> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut buf = vec![0u8; MAX_HOLDER];
    // SAFETY: the path and name are NUL-terminated, the buffer has `buf.len()` writable
    // bytes; all alive for the call.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            HOLDER.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n >= 0 {
        buf.truncate(n as usize);
        return String::from_utf8(buf)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
        _ => Err(e),
    }
}

/// Whether files under `root` keep a user xattr (the probe file is removed).
pub(super) fn supported(root: &Path) -> bool {
    let probe = root.join(format!(
        "{}xattr-probe-{}",
        super::TEMP_PREFIX,
        uuid::Uuid::new_v4().simple()
    ));
    let supported = File::create(&probe).is_ok_and(|f| set_holder(&f, "probe").is_ok())
        && holder(&probe).is_ok_and(|h| h.as_deref() == Some("probe"));
    let _ = std::fs::remove_file(&probe);
    supported
}
