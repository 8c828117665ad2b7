//! Every file and directory aasp writes, with an explicit mode whatever the umask.
//!
//! What aasp writes steers later secrets: a key-info file names the key a layer is wrapped to,
//! the dev CA decides which TLS peer is trusted, the simulator's directory holds private keys.
//! With umask 000 a plain `fs::write` leaves them world-writable, so a local user could redirect
//! wraps or swap the trusted CA. Here:
//! - [`Mode::Private`] (0600 files, 0700 directories) for anything secret or trusted;
//!   [`Mode::Public`] (0644) only for material meant to be read by others (certificates, public
//!   keys, the ocicrypt client configuration).
//! - A destination that is a symbolic link or not a regular file is refused, and left as it is:
//!   `--out` onto a link to `/proc/self/fd/1` or onto `/dev/stdout` must not replace the link or
//!   the device node with a file holding a private key.
//! - A file is written to a fresh temporary name in the same directory (`O_CREAT|O_EXCL`, so
//!   never through a planted symlink), given its mode on the open descriptor, then renamed over
//!   the target: readers see the old or the new content, never half a file, and a link planted
//!   after the check is replaced, never followed.
//! - [`write_output`] is the one rule for a command's output: a file, or standard output when
//!   none (or `-`) is named; raw bytes are not written to a terminal.
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

/// `path` must not exist, or be a regular file (not a symbolic link to one).
fn check_destination(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is a symbolic link: aasp does not write through or over links (name the file \
             itself, or remove the link)",
        )),
        Ok(meta) if !meta.is_file() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "exists and is not a regular file (a device, directory, pipe or socket): name a \
             file path, or `-` for standard output",
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A command's output: to the file `dest` (written as [`write`] writes, so never onto a link or
/// a non-regular file), or to standard output when `dest` is `None` or `-`. `binary` output is
/// refused on a terminal (raw bytes garble it and stay in its scrollback): the error says to
/// name a file or pipe it. A reader that closed the pipe (`| head`) ends the output quietly.
pub fn write_output(dest: Option<&Path>, bytes: &[u8], binary: bool, mode: Mode) -> io::Result<()> {
    use std::io::IsTerminal;
    match dest.filter(|d| d.as_os_str() != "-") {
        Some(path) => write(path, bytes, mode),
        None => {
            let stdout = io::stdout();
            let terminal = stdout.is_terminal();
            to_stdout(&mut stdout.lock(), terminal, bytes, binary)
        }
    }
}

fn to_stdout(out: &mut impl Write, terminal: bool, bytes: &[u8], binary: bool) -> io::Result<()> {
    if binary && terminal {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "standard output is a terminal and the output is raw bytes: write it to a file with \
             --out FILE, or pipe it (| xxd, > FILE)",
        ));
    }
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| io::Error::new(e.kind(), format!("standard output: {e}"))),
    }
}

fn write_inner(path: &Path, bytes: &[u8], mode: Mode) -> io::Result<()> {
    check_destination(path)?;
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
    fn a_symlink_or_a_non_regular_file_at_the_target_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = dir.path().join("ca.pem");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = write_private(&link, b"secret").unwrap_err().to_string();
        assert!(err.contains("is a symbolic link"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        // A dangling link too: writing would create its target.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(write_output(Some(&dangling), b"x", false, Mode::Private).is_err());
        assert!(!dir.path().join("nowhere").exists());
        for not_a_file in [Path::new("/dev/null"), dir.path()] {
            let err = write_private(not_a_file, b"secret")
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
        // Nothing was left behind but what the test made.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn raw_bytes_are_not_written_to_a_terminal() {
        let mut out = Vec::new();
        let err = to_stdout(&mut out, true, b"\x00\x01", true).unwrap_err();
        assert!(err.to_string().contains("--out FILE"), "{err}");
        assert!(out.is_empty());
        to_stdout(&mut out, true, b"text\n", false).unwrap();
        to_stdout(&mut out, false, b"\x00\x01", true).unwrap();
        assert_eq!(out, b"text\n\x00\x01");
    }
}
