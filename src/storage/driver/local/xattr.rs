//! What local files carry beside their bytes, in user extended attributes: the holder a
//! placeholder names (`user.berth.holder` of its empty file, DESIGN decision 9) and an upload's
//! note (`user.berth.note`: the store's saved session state, written with one system call on
//! the open upload). ext4 and tmpfs (Linux 6.6 and later) keep user xattrs; where the root's
//! filesystem refuses them, the driver declares neither `placeholders` nor `upload_notes`
//! (probed at open).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The attribute naming a placeholder's holder.
const HOLDER: &std::ffi::CStr = c"user.berth.holder";

/// The attribute holding an upload's note.
const NOTE: &std::ffi::CStr = c"user.berth.note";

/// Longest value read back: a holder is a repository name (at most 255 bytes in berth's
/// grammar) plus a blob's path under it; a note is a serialised hash state of a few hundred.
const MAX_VALUE: usize = 4096;

/// Sets the holder attribute of the open `file`.
pub(super) fn set_holder(file: &File, holder: &str) -> io::Result<()> {
    set(file, HOLDER, holder.as_bytes())
}

/// The holder attribute of the file at `path`: `None` when it has none (or the filesystem
/// keeps no user xattrs); `NotFound` when nothing is there.
pub(super) fn holder(path: &Path) -> io::Result<Option<String>> {
    get(path, HOLDER)?
        .map(|bytes| {
            String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        })
        .transpose()
}

/// Sets the note attribute of the open upload `file`.
pub(super) fn set_note(file: &File, note: &[u8]) -> io::Result<()> {
    set(file, NOTE, note)
}

/// Removes the note attribute of the open `file`, if it has one.
pub(super) fn remove_note(file: &File) -> io::Result<()> {
    // SAFETY: the name is NUL-terminated and alive for the call; the descriptor is open.
    let rc = unsafe { libc::fremovexattr(file.as_raw_fd(), NOTE.as_ptr()) };
    if rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::ENODATA) {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The note attribute of the upload at `path`, as `holder` reads its attribute.
pub(super) fn note(path: &Path) -> io::Result<Option<Vec<u8>>> {
    get(path, NOTE)
}

fn set(file: &File, name: &std::ffi::CStr, value: &[u8]) -> io::Result<()> {
    if value.len() > MAX_VALUE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "extended attribute value too long",
        ));
    }
    // SAFETY: the name is NUL-terminated and the value is `value.len()` readable bytes,
    // both alive for the call; the descriptor is open.
    let rc = unsafe {
        libc::fsetxattr(
            file.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get(path: &Path, name: &std::ffi::CStr) -> io::Result<Option<Vec<u8>>> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut buf = vec![0u8; MAX_VALUE];
    // SAFETY: the path and name are NUL-terminated, the buffer has `buf.len()` writable
    // bytes; all alive for the call.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n >= 0 {
        buf.truncate(n as usize);
        return Ok(Some(buf));
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
