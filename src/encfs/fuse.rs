//! One file over FUSE: the plaintext device of an encrypted filesystem, served as `data` in a
//! directory of its own, for a loop device to attach to (upstream azmount serves the blob as
//! `data` the same way, and dm-crypt decrypts it; here the file is already plaintext).
//!
//! The FUSE server is the `fuser` crate without libfuse: it mounts with the mount(2) syscall
//! as root (falling back to `fusermount3`), so the image needs neither libfuse nor pkg-config
//! to build or run. Requests arrive on fuser's thread and are answered from tasks on the tokio
//! runtime, so reads for different blocks (the kernel's read-ahead among them) are served at
//! the same time instead of one after another.

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, WriteFlags,
};
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The file's name in the FUSE directory (upstream's).
pub const FILE_NAME: &str = "data";
const FILE_INO: INodeNo = INodeNo(2);
/// Nothing about the file changes behind the kernel's back: attributes may be cached long.
const TTL: Duration = Duration::from_secs(3600);

/// What the FUSE file serves: a fixed-size device.
pub trait Device: Send + Sync + 'static {
    fn size(&self) -> u64;
    fn read(
        self: Arc<Self>,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
    fn write(
        self: Arc<Self>,
        offset: u64,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Makes every write so far durable (fsync).
    fn flush(self: Arc<Self>) -> impl Future<Output = Result<(), String>> + Send;
}

struct DataFile<D: Device> {
    device: Arc<D>,
    runtime: tokio::runtime::Handle,
    read_only: bool,
    name: String,
}

impl<D: Device> DataFile<D> {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let now = SystemTime::UNIX_EPOCH;
        let (kind, perm, size, nlink) = if ino == FILE_INO {
            let perm = if self.read_only { 0o400 } else { 0o600 };
            (FileType::RegularFile, perm, self.device.size(), 1)
        } else {
            (FileType::Directory, 0o500, 0, 2)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Runs `work` on the runtime and answers with what it returns; errors are logged once and
    /// answered with EIO (the reader sees an I/O error, never a hang).
    fn spawn<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl Future<Output = Result<T, String>> + Send + 'static,
        ok: impl FnOnce(T) + Send + 'static,
        fail: impl FnOnce(Errno) + Send + 'static,
    ) {
        let name = self.name.clone();
        self.runtime.spawn(async move {
            match work.await {
                Ok(value) => ok(value),
                Err(e) => {
                    tracing::error!(filesystem = %name, error = %e, "{what} failed: answering EIO");
                    fail(Errno::EIO);
                }
            }
        });
    }
}

impl<D: Device> fuser::Filesystem for DataFile<D> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Larger requests and more of them in flight: the kernel's read-ahead on the file then
        // reaches the block cache as several concurrent reads. Values the kernel refuses are
        // replaced by its nearest; either way works.
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(32);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == FILE_NAME {
            reply.entry(&TTL, &self.attr(FILE_INO), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if ino == INodeNo::ROOT || ino == FILE_INO {
            reply.attr(&TTL, &self.attr(ino));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        let writing = (flags.0 & libc::O_ACCMODE) != libc::O_RDONLY;
        if writing && self.read_only {
            return reply.error(Errno::EROFS);
        }
        // Only this process changes the file: the kernel may keep its page cache across opens.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
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
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        let end = offset
            .saturating_add(u64::from(size))
            .min(self.device.size());
        let len = end.saturating_sub(offset) as usize;
        if len == 0 {
            return reply.data(&[]);
        }
        let (ok, fail) = split(
            reply,
            |r: ReplyData, data: Vec<u8>| r.data(&data),
            ReplyData::error,
        );
        self.spawn("read", Arc::clone(&self.device).read(offset, len), ok, fail);
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
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        if self.read_only {
            return reply.error(Errno::EROFS);
        }
        let fits = offset
            .checked_add(data.len() as u64)
            .is_some_and(|end| end <= self.device.size());
        if !fits {
            // The device has a fixed size: the blob's.
            return reply.error(Errno::ENOSPC);
        }
        let written = data.len() as u32;
        let (ok, fail) = split(
            reply,
            move |r: ReplyWrite, ()| r.written(written),
            ReplyWrite::error,
        );
        self.spawn(
            "write",
            Arc::clone(&self.device).write(offset, data.to_vec()),
            ok,
            fail,
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): the write-back flusher and fsync make data durable; close does not wait.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let (ok, fail) = split(reply, |r: ReplyEmpty, ()| r.ok(), ReplyEmpty::error);
        self.spawn("fsync", Arc::clone(&self.device).flush(), ok, fail);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, FILE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// One reply, answered either way from whichever closure runs.
fn split<R: Send + 'static, T>(
    reply: R,
    ok: impl FnOnce(R, T) + Send + 'static,
    fail: impl FnOnce(R, Errno) + Send + 'static,
) -> (
    impl FnOnce(T) + Send + 'static,
    impl FnOnce(Errno) + Send + 'static,
)
where
    T: Send + 'static,
{
    let slot = Arc::new(std::sync::Mutex::new(Some(reply)));
    let other = Arc::clone(&slot);
    let take = |slot: &std::sync::Mutex<Option<R>>| {
        slot.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    };
    (
        move |value| {
            if let Some(reply) = take(&slot) {
                ok(reply, value);
            }
        },
        move |errno| {
            if let Some(reply) = take(&other) {
                fail(reply, errno);
            }
        },
    )
}

/// A mounted FUSE file; unmounted by [`Mounted::unmount`] (or, failing that, when dropped).
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    dir: std::path::PathBuf,
}

impl Mounted {
    /// The file the loop device attaches to.
    pub fn file(&self) -> std::path::PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Unmounts and waits for the server thread to end.
    pub fn unmount(mut self) -> Result<(), String> {
        match self.session.take() {
            Some(session) => session
                .umount_and_join()
                .map_err(|e| format!("unmounting the FUSE file at {}: {e}", self.dir.display())),
            None => Ok(()),
        }
    }
}

/// Serves `device` as `<dir>/data` (`dir` must exist and be empty). `name` labels log lines.
pub fn mount<D: Device>(
    device: Arc<D>,
    dir: &Path,
    read_only: bool,
    name: String,
    runtime: tokio::runtime::Handle,
) -> Result<Mounted, String> {
    let mut options = vec![
        MountOption::FSName("aasp-encfs".into()),
        MountOption::Subtype("aasp".into()),
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
    ];
    if read_only {
        options.push(MountOption::RO);
    }
    let mut config = fuser::Config::default();
    config.mount_options = options;
    let file = DataFile {
        device,
        runtime,
        read_only,
        name,
    };
    let session = fuser::spawn_mount(file, dir, &config).map_err(|e| {
        format!(
            "cannot mount the FUSE file at {}: {e} (the sidecar needs /dev/fuse and CAP_SYS_ADMIN: \
             run it privileged)",
            dir.display()
        )
    })?;
    Ok(Mounted {
        session: Some(session),
        dir: dir.to_path_buf(),
    })
}
