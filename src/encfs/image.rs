//! Making and checking encfs images outside the TEE, without root: the filesystem is built by
//! `mkfs.ext4 -d` in a plain file, and aasp writes the LUKS2 container around it (header from
//! [`super::format`], then the payload encrypted sector by sector). No loop device, no
//! device-mapper, no cryptsetup.

use super::format::{self, DATA_OFFSET, SECTOR_SIZE};
use super::luks2::{Luks2Error, Luks2Header, Volume, BINARY_HEADER_LEN};
use super::passphrase::Passphrase;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Bytes encrypted per write: large enough to amortise the system calls.
const CHUNK: usize = 1 << 20;
/// The ext4 superblock's magic, at byte 1024 + 56 of the filesystem, little-endian.
const EXT4_MAGIC: u16 = 0xEF53;
const EXT4_MAGIC_OFFSET: usize = 1024 + 56;

/// Why an image cannot be made or read.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mkfs.ext4 failed ({status}): {stderr}")]
    Mkfs { status: String, stderr: String },
    #[error("cannot run mkfs.ext4 ({0}): install e2fsprogs")]
    NoMkfs(std::io::Error),
    #[error("--size {size}: {why}")]
    Size { size: u64, why: String },
    #[error(transparent)]
    Luks2(#[from] Luks2Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `create` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Bytes of the whole image.
    pub image_size: u64,
    /// Bytes of the ext4 filesystem inside.
    pub filesystem_size: u64,
}

/// The image size for `from` when no `--size` is given: the content, ext4's metadata and
/// journal, and for a read-write image as much free room again plus 64 MiB.
pub fn default_size(from: &Path, read_write: bool) -> Result<u64, ImageError> {
    let content = tree_size(from)?;
    // ext4 on small filesystems: inode tables, bitmaps and a 4–16 MiB journal.
    let filesystem = content + content / 4 + (16 << 20);
    let filesystem = if read_write {
        filesystem + content + (64 << 20)
    } else {
        filesystem
    };
    Ok(DATA_OFFSET + filesystem.div_ceil(1 << 20) * (1 << 20))
}

/// Bytes a directory tree takes in 4 KiB blocks, one block per entry at least.
fn tree_size(dir: &Path) -> Result<u64, ImageError> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        total += meta.len().div_ceil(4096).max(1) * 4096;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(io(&path))? {
                stack.push(entry.map_err(io(&path))?.path());
            }
        }
    }
    Ok(total)
}

/// Builds ext4 from `from` and writes the encrypted image to `out` (`size` bytes in all),
/// opening with `passphrase`. `out` appears only when complete.
pub fn create(
    from: &Path,
    out: &Path,
    size: u64,
    passphrase: &Passphrase,
) -> Result<Created, ImageError> {
    if size % 512 != 0 {
        return Err(ImageError::Size {
            size,
            why: "not a multiple of 512 bytes (page blobs are 512-byte aligned)".into(),
        });
    }
    let min = DATA_OFFSET + (4 << 20);
    if size < min {
        return Err(ImageError::Size {
            size,
            why: format!("smaller than {min} bytes (1 MiB of LUKS2 header and a 4 MiB filesystem)"),
        });
    }
    let filesystem_size = (size - DATA_OFFSET) / u64::from(SECTOR_SIZE) * u64::from(SECTOR_SIZE);
    let plain = TempFile::new(out, "ext4")?;
    make_ext4(from, &plain.path, filesystem_size)?;

    let key = format::new_volume_key()?;
    let (header, volume) = format::header(&key, passphrase)?;
    let staged = TempFile::new(out, "image")?;
    {
        let mut image = staged.open_write()?;
        image.write_all(&header).map_err(io(&staged.path))?;
        let mut source = std::fs::File::open(&plain.path).map_err(io(&plain.path))?;
        encrypt_stream(&mut source, &mut image, &volume, filesystem_size)
            .map_err(io(&staged.path))?;
        image.set_len(size).map_err(io(&staged.path))?;
        image.sync_all().map_err(io(&staged.path))?;
    }
    std::fs::rename(&staged.path, out).map_err(io(out))?;
    staged.keep();
    Ok(Created {
        image_size: size,
        filesystem_size,
    })
}

fn make_ext4(from: &Path, file: &Path, size: u64) -> Result<(), ImageError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|f| f.set_len(size))
        .map_err(io(file))?;
    // -d copies the tree without root; -m 0: no blocks reserved for root in a data volume;
    // nodiscard and eager table/journal init: every block mke2fs relies on is written into the
    // plain file, so the encrypted image decrypts to exactly it.
    let output = std::process::Command::new(mkfs_path())
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0"])
        .args(["-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"])
        .arg("-d")
        .arg(from)
        .arg(file)
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(ImageError::NoMkfs)?;
    if !output.status.success() {
        return Err(ImageError::Mkfs {
            status: output.status.to_string(),
            stderr: crate::echo::limit(String::from_utf8_lossy(&output.stderr).trim()),
        });
    }
    Ok(())
}

/// `mkfs.ext4` from PATH, else the sbin directories a non-root PATH often lacks.
fn mkfs_path() -> PathBuf {
    for dir in ["/usr/sbin", "/sbin"] {
        let candidate = Path::new(dir).join("mkfs.ext4");
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from("mkfs.ext4")
}

/// Encrypts `len` bytes of plaintext from `source` into `sink`, sector by sector.
fn encrypt_stream(
    source: &mut impl Read,
    sink: &mut impl Write,
    volume: &Volume,
    len: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < len {
        let n = usize::try_from((len - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
        let chunk = buf.get_mut(..n).unwrap_or_default();
        source.read_exact(chunk)?;
        volume
            .encrypt(offset, chunk)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        sink.write_all(chunk)?;
        offset += n as u64;
    }
    Ok(())
}

/// What `check` found in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub uuid: String,
    pub data_offset: u64,
    pub sector_size: u32,
    pub data_size: u64,
    /// Whether the decrypted payload starts with an ext4 superblock.
    pub ext4: bool,
}

/// A local image whose LUKS2 header was read as the mount side reads it (a prefix, then what the
/// header asks for) and validated; nothing is unlocked yet.
pub struct LocalImage {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    header: Luks2Header,
}

impl LocalImage {
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let mut file = std::fs::File::open(path).map_err(io(path))?;
        let size = file.metadata().map_err(io(path))?.len();
        let header = read_header(&mut file, path)?;
        Ok(LocalImage {
            path: path.to_path_buf(),
            file,
            size,
            header,
        })
    }

    /// Unlocks the validated header with `passphrase` and looks for ext4 inside.
    pub fn check(&mut self, passphrase: &Passphrase) -> Result<Checked, ImageError> {
        let volume = self.header.unlock(passphrase)?;
        let data_size = volume.data_size(self.size);
        let mut first = vec![0u8; volume.sector_size() as usize];
        let ext4 = if data_size >= first.len() as u64 {
            self.file
                .seek(SeekFrom::Start(volume.data_offset()))
                .and_then(|_| self.file.read_exact(&mut first))
                .map_err(io(&self.path))?;
            volume.decrypt(0, &mut first)?;
            first
                .get(EXT4_MAGIC_OFFSET..EXT4_MAGIC_OFFSET + 2)
                .is_some_and(|m| m == EXT4_MAGIC.to_le_bytes())
        } else {
            false
        };
        Ok(Checked {
            uuid: self.header.uuid().to_owned(),
            data_offset: volume.data_offset(),
            sector_size: volume.sector_size(),
            data_size,
            ext4,
        })
    }
}

/// [`LocalImage::open`], then [`LocalImage::check`].
pub fn check(image: &Path, passphrase: &Passphrase) -> Result<Checked, ImageError> {
    LocalImage::open(image)?.check(passphrase)
}

/// The header of a local image, read the way [`Luks2Header::parse`] asks.
pub fn read_header(file: &mut std::fs::File, path: &Path) -> Result<Luks2Header, ImageError> {
    let mut want = BINARY_HEADER_LEN as u64;
    loop {
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0)).map_err(io(path))?;
        std::io::Read::by_ref(file)
            .take(want)
            .read_to_end(&mut bytes)
            .map_err(io(path))?;
        match Luks2Header::parse(&bytes) {
            Err(Luks2Error::Truncated { needed })
                if needed > want && bytes.len() as u64 == want =>
            {
                want = needed;
            }
            other => return Ok(other?),
        }
    }
}

/// A file beside the output, removed unless kept.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn new(beside: &Path, what: &str) -> Result<Self, ImageError> {
        let mut name = beside.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{what}.{}.tmp", std::process::id()));
        let path = beside.with_file_name(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        Ok(TempFile { path, keep: false })
    }

    fn open_write(&self) -> Result<std::fs::File, ImageError> {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(io(&self.path))
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
