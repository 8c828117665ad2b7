//! Mounting one filesystem, upstream's contract (`cmd/remotefs/azurefs.go`): the ext4 inside
//! goes to `<parent of mount_point>/.filesystem-<i>` (`nosuid,nodev`; `ro,noload` read-only),
//! and only then does `mount_point` appear, as a relative symlink to `.filesystem-<i>`: the
//! workload polls for it, so it never sees a half-mounted filesystem.
//!
//! Every step taken is recorded, and a failure undoes them in reverse: a filesystem that fails
//! leaves no mount, loop device, FUSE file, directory or symlink behind. Shutdown undoes the
//! same steps, flushing written data to storage after ext4 and the loop device let go of it.
//!
//! Loop devices and mounts are kernel calls (`sys`): the image needs no util-linux. Only the
//! kernel path runs a tool, `cryptsetup`, which that path needs anyway.

use crate::encfs::{fuse, sys};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Makes written data durable (the block cache's flush).
pub type FlushFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Where one filesystem goes.
#[derive(Debug, Clone)]
pub struct Layout {
    pub index: usize,
    /// The symlink the workload reads through.
    pub mount_point: PathBuf,
    /// `<parent>/.filesystem-<i>`: where ext4 is mounted.
    pub fs_dir: PathBuf,
    /// The symlink's target, relative: `.filesystem-<i>`.
    pub link_target: PathBuf,
    /// A private directory for the FUSE file.
    pub fuse_dir: PathBuf,
}

impl Layout {
    /// Checks upstream's rule: `mount_point` must not exist and its parent must.
    pub fn new(index: usize, mount_point: &str, work_dir: &Path) -> Result<Self, String> {
        let given = Path::new(mount_point.trim());
        let mount_point = if given.is_absolute() {
            given.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| format!("cannot resolve the relative mount_point: {e}"))?
                .join(given)
        };
        let name = mount_point
            .file_name()
            .filter(|n| *n != ".." && *n != ".")
            .ok_or("mount_point must end in a name (not /, . or ..)")?;
        let _ = name;
        let parent = mount_point
            .parent()
            .ok_or("mount_point must have a parent directory")?;
        match std::fs::symlink_metadata(&mount_point) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(_) => {
                return Err(format!(
                    "mount_point {} already exists: it must not (the sidecar creates it as a \
                     symlink once the filesystem is ready); remove it or pick another path",
                    mount_point.display()
                ))
            }
            Err(e) => return Err(format!("mount_point {}: {e}", mount_point.display())),
        }
        if !parent.is_dir() {
            return Err(format!(
                "the parent of mount_point, {}, is not an existing directory: create it (in \
                 Kubernetes and ACI, the shared emptyDir volume)",
                parent.display()
            ));
        }
        let link_target = PathBuf::from(format!(".filesystem-{index}"));
        Ok(Layout {
            index,
            fs_dir: parent.join(&link_target),
            mount_point,
            link_target,
            fuse_dir: work_dir.join(index.to_string()),
        })
    }
}

/// A step taken, to be undone.
enum Step {
    FuseDir(PathBuf),
    Fuse(fuse::Mounted),
    Loop(PathBuf),
    /// A dm-crypt mapping (`cryptsetup close` undoes it).
    Mapping(String),
    FsDir(PathBuf),
    Mounted(PathBuf),
    Symlink(PathBuf),
}

/// A mounted filesystem; [`Mounted::unmount`] takes it down.
pub struct Mounted {
    pub layout: Layout,
    steps: Vec<Step>,
    flush: FlushFn,
    stop_flusher: Option<tokio::sync::watch::Sender<bool>>,
    name: String,
}

impl Mounted {
    fn new(layout: Layout, flush: FlushFn, name: String) -> Self {
        Mounted {
            layout,
            steps: Vec::new(),
            flush,
            stop_flusher: None,
            name,
        }
    }

    /// Stops the background flusher when this filesystem goes down.
    pub fn stop_flusher_with(&mut self, stop: tokio::sync::watch::Sender<bool>) {
        self.stop_flusher = Some(stop);
    }

    /// Undoes every step in reverse: the symlink goes first (the workload stops finding the
    /// filesystem), ext4 is unmounted (its data reaches the FUSE file), the loop device is
    /// detached, the cache flushed to storage, the FUSE file unmounted, the directories removed.
    /// Goes on past failures and reports them all.
    pub async fn unmount(mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        let mut flushed = false;
        while let Some(step) = self.steps.pop() {
            let result = match step {
                Step::Symlink(path) => std::fs::remove_file(&path)
                    .map_err(|e| format!("removing the symlink {}: {e}", path.display())),
                Step::Mounted(dir) => umount(&dir).await,
                Step::FsDir(dir) | Step::FuseDir(dir) => std::fs::remove_dir(&dir)
                    .map_err(|e| format!("removing {}: {e}", dir.display())),
                Step::Loop(device) => {
                    tokio::task::spawn_blocking(move || sys::loop_detach(&device))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r)
                }
                Step::Mapping(name) => run("cryptsetup", &["close", &name]).await.map(drop),
                Step::Fuse(fuse) => {
                    flushed = true;
                    let flush = (self.flush)().await;
                    let unmounted = tokio::task::spawn_blocking(move || fuse.unmount())
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r);
                    flush
                        .map_err(|e| format!("writing back to storage: {e}"))
                        .and(unmounted)
                }
            };
            if let Err(e) = result {
                problems.push(e);
            }
        }
        if !flushed {
            if let Err(e) = (self.flush)().await {
                problems.push(format!("writing back to storage: {e}"));
            }
        }
        if let Some(stop) = self.stop_flusher.take() {
            let _ = stop.send(true);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{}: {}", self.name, problems.join("; ")))
        }
    }
}

/// Serves `device` over FUSE and mounts the ext4 inside at the layout's place, then links
/// `mount_point`. On failure everything done is undone and the error says which step failed.
pub async fn mount_device<D: fuse::Device>(
    layout: Layout,
    device: Arc<D>,
    read_only: bool,
    name: String,
    flush: FlushFn,
) -> Result<Mounted, String> {
    mount_with(layout, device, None, read_only, name, flush).await
}

/// What the kernel path hands `cryptsetup open`: the validated header copy (as a detached
/// header file, so cryptsetup never reads the header from storage) and the passphrase.
pub struct Kernel {
    pub header: Vec<u8>,
    pub passphrase: zeroize::Zeroizing<Vec<u8>>,
}

/// The kernel path: `device` is the image as stored, dm-crypt decrypts it.
pub async fn mount_kernel<D: fuse::Device>(
    layout: Layout,
    device: Arc<D>,
    kernel: Kernel,
    read_only: bool,
    name: String,
    flush: FlushFn,
) -> Result<Mounted, String> {
    mount_with(layout, device, Some(kernel), read_only, name, flush).await
}

async fn mount_with<D: fuse::Device>(
    layout: Layout,
    device: Arc<D>,
    kernel: Option<Kernel>,
    read_only: bool,
    name: String,
    flush: FlushFn,
) -> Result<Mounted, String> {
    let mut mounted = Mounted::new(layout, flush, name.clone());
    match take_steps(&mut mounted, device, kernel, read_only).await {
        Ok(()) => Ok(mounted),
        Err(e) => {
            if let Err(cleanup) = mounted.unmount().await {
                tracing::error!(filesystem = %name, error = %cleanup, "cleaning up after a failed mount");
            }
            Err(e)
        }
    }
}

async fn take_steps<D: fuse::Device>(
    mounted: &mut Mounted,
    device: Arc<D>,
    kernel: Option<Kernel>,
    read_only: bool,
) -> Result<(), String> {
    let layout = mounted.layout.clone();
    create_private_dir(&layout.fuse_dir)?;
    mounted.steps.push(Step::FuseDir(layout.fuse_dir.clone()));

    let runtime = tokio::runtime::Handle::current();
    let dir = layout.fuse_dir.clone();
    let name = mounted.name.clone();
    let fuse =
        tokio::task::spawn_blocking(move || fuse::mount(device, &dir, read_only, name, runtime))
            .await
            .map_err(|e| e.to_string())??;
    let file = fuse.file();
    mounted.steps.push(Step::Fuse(fuse));

    let file_text = file.to_string_lossy().into_owned();
    let block_device = match kernel {
        None => {
            let loop_device = sys::loop_attach(&file, read_only).map_err(|e| {
                format!(
                    "attaching a loop device: {e} (the sidecar needs /dev/loop-control and \
                     loop devices: run it privileged)"
                )
            })?;
            mounted.steps.push(Step::Loop(loop_device.path.clone()));
            (loop_device.path.clone(), Some(loop_device))
        }
        Some(kernel) => {
            let mapping = format!("aasp-encfs-{}", layout.index);
            open_mapping(&layout, &file_text, &mapping, &kernel, read_only).await?;
            mounted.steps.push(Step::Mapping(mapping.clone()));
            (PathBuf::from(format!("/dev/mapper/{mapping}")), None)
        }
    };
    let (block_device, held_open) = block_device;

    match std::fs::create_dir(&layout.fs_dir) {
        Ok(()) => mounted.steps.push(Step::FsDir(layout.fs_dir.clone())),
        // Left by a sidecar that was killed: reused when empty and not mounted.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let empty = std::fs::read_dir(&layout.fs_dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !empty {
                return Err(format!(
                    "{} exists and is not empty (a filesystem still mounted there?): unmount and \
                     remove it",
                    layout.fs_dir.display()
                ));
            }
            mounted.steps.push(Step::FsDir(layout.fs_dir.clone()));
        }
        Err(e) => return Err(format!("creating {}: {e}", layout.fs_dir.display())),
    }

    sys::mount_ext4(&block_device, &layout.fs_dir, read_only)
        .map_err(|e| format!("mounting the ext4 filesystem inside the image: {e}"))?;
    mounted.steps.push(Step::Mounted(layout.fs_dir.clone()));
    // The mount holds the loop device now.
    drop(held_open);

    std::os::unix::fs::symlink(&layout.link_target, &layout.mount_point).map_err(|e| {
        format!(
            "creating the symlink {} -> {}: {e}",
            layout.mount_point.display(),
            layout.link_target.display()
        )
    })?;
    mounted
        .steps
        .push(Step::Symlink(layout.mount_point.clone()));
    Ok(())
}

/// `cryptsetup open` of the FUSE file with the validated header as a detached header file
/// (owner-only, removed once the mapping exists: dm-crypt keeps the key in the kernel) and the
/// passphrase on standard input.
async fn open_mapping(
    layout: &Layout,
    file: &str,
    mapping: &str,
    kernel: &Kernel,
    read_only: bool,
) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    use tokio::io::AsyncWriteExt;
    let header_path = layout.fuse_dir.with_extension("luks-header");
    {
        use std::io::Write;
        let mut header = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&header_path)
            .map_err(|e| {
                format!(
                    "writing the validated header to {}: {e}",
                    header_path.display()
                )
            })?;
        header
            .write_all(&kernel.header)
            .map_err(|e| format!("writing the validated header: {e}"))?;
    }
    let header_text = header_path.to_string_lossy().into_owned();
    let mut args = vec![
        "open",
        "--type",
        "luks2",
        "--header",
        &header_text,
        "--key-file",
        "-",
    ];
    if read_only {
        args.push("--readonly");
    }
    args.extend([file, mapping]);
    let opened = async {
        let mut child = tokio::process::Command::new("cryptsetup")
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run cryptsetup: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&kernel.passphrase)
                .await
                .map_err(|e| format!("cryptsetup: {e}"))?;
        }
        let output = child
            .wait_with_output()
            .await
            .map_err(|e| format!("cryptsetup: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "cryptsetup open failed ({}): {}",
                output.status,
                crate::http::quoted(String::from_utf8_lossy(&output.stderr).trim())
            ))
        }
    }
    .await;
    if let Err(e) = std::fs::remove_file(&header_path) {
        // Only validated public metadata: worth a line, not a failed mount.
        tracing::warn!(path = %header_path.display(), error = %e, "cannot remove the header copy");
    }
    opened
}

fn create_private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && is_empty_dir(dir) => Ok(()),
        Err(e) => Err(format!("creating {}: {e}", dir.display())),
    }
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

/// Unmounts, waiting a little for a busy filesystem (a workload closing its files), then
/// detaches it lazily so shutdown can finish; the last case is logged.
async fn umount(dir: &Path) -> Result<(), String> {
    let mut last = None;
    for _ in 0..10 {
        match sys::unmount(dir, false) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => last = Some(e),
            Err(e) => return Err(format!("unmounting {}: {e}", dir.display())),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tracing::warn!(
        dir = %dir.display(),
        error = ?last,
        "filesystem busy: detaching it lazily; writes after this point may not reach storage"
    );
    sys::unmount(dir, true).map_err(|e| format!("unmounting {}: {e}", dir.display()))
}

/// Runs a system tool; its standard output, or an error with its standard error.
pub(crate) async fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            crate::http::quoted(stderr.trim())
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_point_must_not_exist_and_its_parent_must() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        let mp = dir.path().join("share");
        let layout = Layout::new(3, mp.to_str().unwrap(), &work).unwrap();
        assert_eq!(layout.fs_dir, dir.path().join(".filesystem-3"));
        assert_eq!(layout.link_target, PathBuf::from(".filesystem-3"));
        assert_eq!(layout.fuse_dir, work.join("3"));
        std::fs::create_dir(&mp).unwrap();
        let err = Layout::new(3, mp.to_str().unwrap(), &work).unwrap_err();
        assert!(err.contains("already exists"), "{err}");
        let orphan = dir.path().join("missing/share");
        let err = Layout::new(0, orphan.to_str().unwrap(), &work).unwrap_err();
        assert!(err.contains("not an existing directory"), "{err}");
        // A dangling symlink exists too.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(".filesystem-9", &dangling).unwrap();
        assert!(Layout::new(0, dangling.to_str().unwrap(), &work).is_err());
        assert!(Layout::new(0, "/", &work).is_err());
    }
}

/// Root-only: a real FUSE file, loop device and ext4 mount, over a plain (unencrypted) image in
/// memory, so that these steps are tested apart from the crypto and the storage.
#[cfg(test)]
mod root_tests {
    use super::*;
    use std::sync::Mutex;

    struct PlainImage {
        bytes: Mutex<Vec<u8>>,
        flushes: std::sync::atomic::AtomicUsize,
    }

    impl fuse::Device for PlainImage {
        fn size(&self) -> u64 {
            self.bytes.lock().unwrap().len() as u64
        }

        fn read(
            self: Arc<Self>,
            offset: u64,
            len: usize,
        ) -> impl Future<Output = Result<Vec<u8>, String>> + Send {
            let data = self.bytes.lock().unwrap()[offset as usize..offset as usize + len].to_vec();
            async move { Ok(data) }
        }

        fn write(
            self: Arc<Self>,
            offset: u64,
            data: Vec<u8>,
        ) -> impl Future<Output = Result<(), String>> + Send {
            self.bytes.lock().unwrap()[offset as usize..offset as usize + data.len()]
                .copy_from_slice(&data);
            async { Ok(()) }
        }

        fn flush(self: Arc<Self>) -> impl Future<Output = Result<(), String>> + Send {
            self.flushes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok(()) }
        }
    }

    fn is_root() -> bool {
        // SAFETY-free: the effective uid from /proc.
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
            })
            .unwrap_or(false)
    }

    fn mounted_under(dir: &Path) -> Vec<String> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = dir.to_string_lossy().into_owned();
        mounts
            .lines()
            .filter(|l| l.contains(&dir))
            .map(str::to_owned)
            .collect()
    }

    fn ext4_image(dir: &Path, content: &Path) -> Vec<u8> {
        let image = dir.join("plain.img");
        let status = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(content)
            .arg(&image)
            .arg("4M")
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::read(&image).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plain_image_mounts_behind_the_symlink_and_goes_away_cleanly() {
        if !is_root() {
            eprintln!("skipped: FUSE, loop devices and mount(2) need root (CI runs as root)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("content");
        std::fs::create_dir(&content).unwrap();
        std::fs::write(content.join("hello.txt"), "hello from ext4\n").unwrap();
        let device = Arc::new(PlainImage {
            bytes: Mutex::new(ext4_image(dir.path(), &content)),
            flushes: Default::default(),
        });
        let shared = dir.path().join("remote");
        std::fs::create_dir(&shared).unwrap();
        let work = dir.path().join("work");
        let flush_device = Arc::clone(&device);
        let flush: FlushFn = Arc::new(move || {
            let device = Arc::clone(&flush_device);
            Box::pin(async move { fuse::Device::flush(device).await })
        });

        let layout = Layout::new(0, shared.join("share").to_str().unwrap(), &work).unwrap();
        let mounted = mount_device(
            layout,
            Arc::clone(&device),
            false,
            "fs 0".into(),
            flush.clone(),
        )
        .await
        .unwrap();
        let link = std::fs::read_link(shared.join("share")).unwrap();
        assert_eq!(link, PathBuf::from(".filesystem-0"));
        assert_eq!(
            std::fs::read_to_string(shared.join("share/hello.txt")).unwrap(),
            "hello from ext4\n"
        );
        std::fs::write(shared.join("share/new.txt"), "written\n").unwrap();
        let options = mounted_under(&shared.join(".filesystem-0"));
        assert!(
            options
                .iter()
                .any(|l| l.contains("nosuid") && l.contains("nodev")),
            "{options:?}"
        );
        mounted.unmount().await.unwrap();
        assert!(
            mounted_under(dir.path()).is_empty(),
            "{:?}",
            mounted_under(dir.path())
        );
        assert!(!shared.join("share").exists());
        assert!(!shared.join(".filesystem-0").exists());
        assert!(!work.join("0").exists());
        assert!(device.flushes.load(std::sync::atomic::Ordering::SeqCst) >= 1);

        // What was written is in the image: mounted again, read-only this time.
        let layout = Layout::new(0, shared.join("share").to_str().unwrap(), &work).unwrap();
        let mounted = mount_device(layout, Arc::clone(&device), true, "fs 0".into(), flush)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(shared.join("share/new.txt")).unwrap(),
            "written\n"
        );
        let err = std::fs::write(shared.join("share/more.txt"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        mounted.unmount().await.unwrap();
        assert!(mounted_under(dir.path()).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_device_that_is_not_ext4_leaves_nothing_behind() {
        if !is_root() {
            eprintln!("skipped: FUSE, loop devices and mount(2) need root (CI runs as root)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let device = Arc::new(PlainImage {
            bytes: Mutex::new(vec![0x5a; 1 << 20]),
            flushes: Default::default(),
        });
        let shared = dir.path().join("remote");
        std::fs::create_dir(&shared).unwrap();
        let work = dir.path().join("work");
        let flush_device = Arc::clone(&device);
        let flush: FlushFn = Arc::new(move || {
            let device = Arc::clone(&flush_device);
            Box::pin(async move { fuse::Device::flush(device).await })
        });
        let layout = Layout::new(1, shared.join("share").to_str().unwrap(), &work).unwrap();
        let err = mount_device(layout, device, true, "fs 1".into(), flush)
            .await
            .err()
            .unwrap();
        assert!(err.contains("mounting the ext4 filesystem"), "{err}");
        assert!(
            mounted_under(dir.path()).is_empty(),
            "{:?}",
            mounted_under(dir.path())
        );
        assert!(!shared.join("share").exists());
        assert!(!shared.join(".filesystem-1").exists());
        assert!(!work.join("1").exists());
    }
}
