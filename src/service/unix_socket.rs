//! Binding Unix-domain sockets safely, for every listener kind that serves on a path (gRPC,
//! ttrpc).
//!
//! A socket path is shared with the rest of the file system, so binding one must not:
//! - delete whatever already sits at the path (a regular file, a directory, a symlink): only a
//!   *stale* socket, one that nothing answers on, is replaced;
//! - take a live socket away from another server (a second instance refuses to start instead);
//! - leave a window in which the socket exists with the umask's mode, nor change the mode through
//!   a path an attacker could swap for a symlink.
//!
//! The socket is therefore bound inside a fresh owner-only directory beside the target, given its
//! mode there (nobody else can reach that directory, so the `chmod` cannot be redirected), and
//! then hard-linked to its final name. `link(2)` never replaces an existing entry, so a file that
//! appears at the path meanwhile is left alone and the bind fails. This avoids changing the
//! process-wide umask, which would race with every other thread creating files.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The mode of every socket aasp serves on: only the pod's own user may ask for keys.
pub const SOCKET_MODE: u32 = 0o600;

/// Binds a listening Unix socket at `path` with mode [`SOCKET_MODE`].
///
/// Fails with `AddrInUse` when another process answers on a socket at `path`, and with
/// `AlreadyExists` when `path` is anything but a socket. The returned listener is blocking;
/// `tokio::net::UnixListener::from_std` needs `set_nonblocking(true)` first.
pub fn bind_unix_socket(path: &Path) -> io::Result<UnixListener> {
    bind_unix_socket_with_mode(path, SOCKET_MODE)
}

/// [`bind_unix_socket`] with another mode (e.g. 0o660 for a socket shared with a group).
pub fn bind_unix_socket_with_mode(path: &Path, mode: u32) -> io::Result<UnixListener> {
    remove_if_stale(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let private = PrivateDir::create(&parent)?;
    let staged = private.path.join("s");
    let listener = UnixListener::bind(&staged)?;
    // Only this process can reach `staged` (its directory is 0700 and freshly created), so this
    // path-based chmod cannot be redirected through a symlink.
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))?;
    std::fs::hard_link(&staged, path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} appeared while binding; it was left alone",
                    path.display()
                ),
            )
        } else {
            e
        }
    })?;
    Ok(listener)
}

/// Removes the socket at `path` on shutdown, only if it still is a socket (never a file that
/// replaced it).
pub fn remove_unix_socket(path: &Path) {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Leaves `path` free for a new socket: nothing there is fine; a socket that refuses
/// connections (its server is gone) is removed; anything else is refused.
fn remove_if_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "another process is serving on {}; refusing to take it over",
                path.display()
            ),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing a stale socket");
            std::fs::remove_file(path)
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!(
                "{}: cannot tell whether the socket is in use ({e}); refusing to replace it",
                path.display()
            ),
        )),
    }
}

/// An owner-only directory, removed with its content when dropped.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn create(parent: &Path) -> io::Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut last = None;
        for _ in 0..8 {
            let name = format!(
                ".aasp-bind-{}-{}-{nanos:x}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let path = parent.join(name);
            // `mkdir` never follows or reuses an existing entry: an attacker's name is an error.
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("cannot create a private directory")))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path.join("s"));
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn the_socket_is_owner_only_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let listener = bind_unix_socket(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let _client = UnixStream::connect(&path).unwrap();
        assert!(listener.accept().is_ok());
        // The staging directory is gone.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.sock")]);
    }

    #[test]
    fn a_regular_file_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious");
        std::fs::write(&path, b"data").unwrap();
        let err = bind_unix_socket(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn a_symlink_is_never_replaced_nor_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"data").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(bind_unix_socket(&link).is_err());
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(mode(&target), 0o644);
    }

    #[test]
    fn a_live_socket_is_not_stolen_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let first = bind_unix_socket(&path).unwrap();
        let err = bind_unix_socket(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        // The first server still gets the connections.
        let _client = UnixStream::connect(&path).unwrap();
        assert!(first.accept().is_ok());
        drop(first); // the path stays, nothing answers: stale
        let second = bind_unix_socket(&path).unwrap();
        let _client = UnixStream::connect(&path).unwrap();
        assert!(second.accept().is_ok());
    }

    #[test]
    fn removal_leaves_a_file_that_replaced_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        drop(bind_unix_socket(&path).unwrap());
        remove_unix_socket(&path);
        assert!(!path.exists());
        std::fs::write(&path, b"data").unwrap();
        remove_unix_socket(&path);
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }
}
