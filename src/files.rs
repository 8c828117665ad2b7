//! Every file and directory aasp writes, with an explicit mode whatever the umask.
//!
//! What aasp writes steers later secrets: a key-info file names the key a layer is wrapped to,
//! the dev CA decides which TLS peer is trusted, the simulator's directory holds private keys.
//! With umask 000 a plain `fs::write` leaves them world-writable, so a local user could redirect
//! wraps or swap the trusted CA. Here:
//! - [`Mode::Private`] (0600 files, 0700 directories) for anything secret or trusted;
//!   [`Mode::Public`] (0644) only for material meant to be read by others (certificates, public
//!   keys, the ocicrypt client configuration).
//! - A file is written to a fresh temporary name in the same directory (`O_CREAT|O_EXCL`, so
//!   never through a planted symlink), given its mode on the open descriptor, then renamed over
//!   the target: readers see the old or the new content, never half a file, and a symlink at the
//!   target is replaced rather than followed.
//! - A directory gets its mode when created and is tightened when it already exists.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Who may read what aasp writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Owner only: 0600 files, 0700 directories.
    Private,
    /// World-readable, owner-writable: 0644 files, 0755 directories.
    Public,
}

impl Mode {
    pub fn file(self) -> u32 {
        match self {
            Mode::Private => 0o600,
            Mode::Public => 0o644,
        }
    }

    pub fn dir(self) -> u32 {
        match self {
            Mode::Private => 0o700,
            Mode::Public => 0o755,
        }
    }
}

/// Writes `bytes` to `path` atomically with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write(path, bytes, Mode::Private)
}

/// Writes `bytes` to `path` atomically with mode 0644 (public material only).
pub fn write_public(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write(path, bytes, Mode::Public)
}

/// Writes `bytes` to `path` atomically with `mode`; the error names the path.
pub fn write(path: &Path, bytes: &[u8], mode: Mode) -> io::Result<()> {
    write_inner(path, bytes, mode)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn write_inner(path: &Path, bytes: &[u8], mode: Mode) -> io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    // A name of its own per writer: two processes (or threads) sharing a directory must not
    // write into each other's temporary file.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.file())
            .open(&tmp)?;
        // The umask may have taken bits away at creation (never added): set the exact mode on
        // the descriptor, which cannot be redirected.
        file.set_permissions(std::fs::Permissions::from_mode(mode.file()))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` (and missing parents) owner-only; an existing `dir` is tightened to 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    create_dir(dir, Mode::Private)
}

/// Creates `dir` (and missing parents) with `mode`, and sets that mode when it already exists.
/// Parents created here get the same mode; existing parents are left alone.
pub fn create_dir(dir: &Path, mode: Mode) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode.dir())
        .create(dir)
        .and_then(|()| {
            let meta = std::fs::symlink_metadata(dir)?;
            if !meta.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a directory",
                ));
            }
            if meta.permissions().mode() & 0o7777 != mode.dir() {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode.dir()))?;
            }
            Ok(())
        })
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
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
    fn modes_are_exact_and_existing_files_are_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("state/keys");
        create_private_dir(&private).unwrap();
        assert_eq!(mode(&private), 0o700);
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o777)).unwrap();
        create_private_dir(&private).unwrap();
        assert_eq!(mode(&private), 0o700);

        let secret = private.join("a-info.json");
        std::fs::write(&secret, b"old").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_private(&secret, b"new").unwrap();
        assert_eq!(mode(&secret), 0o600);
        assert_eq!(std::fs::read(&secret).unwrap(), b"new");

        let public = private.join("a.pem");
        write_public(&public, b"cert").unwrap();
        assert_eq!(mode(&public), 0o644);
        // Nothing is left behind but the two files.
        assert_eq!(std::fs::read_dir(&private).unwrap().count(), 2);
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = dir.path().join("ca.pem");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_public(&link, b"cert").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(std::fs::read(&link).unwrap(), b"cert");
    }
}
