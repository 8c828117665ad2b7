//! The devices the FUSE file serves: the decrypted payload of a LUKS2 image (the userspace
//! path: sectors decrypted on the way out, encrypted on the way back), or the image as it is
//! (the kernel path, where dm-crypt decrypts).

use crate::encfs::cache::{BlockCache, Storage};
use crate::encfs::fuse::Device;
use crate::encfs::luks2::{Luks2Error, Luks2Header, Volume, BINARY_HEADER_LEN};
use std::sync::Arc;

/// Reads and validates the image's LUKS2 header through the cache: the first 4 KiB, then as
/// much as the parser asks for (bounded by it). Only this validated copy is used afterwards.
pub async fn read_header<S: Storage>(cache: &Arc<BlockCache<S>>) -> Result<Luks2Header, String> {
    let mut want = (BINARY_HEADER_LEN as u64).min(cache.size());
    loop {
        let bytes = cache
            .read(0, want as usize)
            .await
            .map_err(|e| format!("reading the LUKS2 header: {e}"))?;
        match Luks2Header::parse(&bytes) {
            Ok(header) => return Ok(header),
            Err(Luks2Error::Truncated { needed }) if needed > want && needed <= cache.size() => {
                want = needed;
            }
            Err(Luks2Error::Truncated { needed }) => {
                return Err(format!(
                    "the image is not a LUKS2 image aasp can open: its header needs {needed} \
                     bytes, the blob has {}",
                    cache.size()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "the image's LUKS2 header is refused: {e} (make the image with `aasp encfs \
                     create` or cryptsetup luksFormat --type luks2 --cipher aes-xts-plain64)"
                ))
            }
        }
    }
}

/// The decrypted payload: reads decrypt whole sectors, writes encrypt them.
pub struct CryptDevice<S: Storage> {
    cache: Arc<BlockCache<S>>,
    volume: Volume,
    size: u64,
    sector: u64,
    /// Partial-sector writes read, patch and rewrite a sector: one at a time.
    partial: tokio::sync::Mutex<()>,
}

impl<S: Storage> CryptDevice<S> {
    pub fn new(cache: Arc<BlockCache<S>>, volume: Volume) -> Result<Self, String> {
        let size = volume.data_size(cache.size());
        if size == 0 {
            return Err(format!(
                "the image holds no data after its header (blob {} bytes, data from byte {})",
                cache.size(),
                volume.data_offset()
            ));
        }
        Ok(CryptDevice {
            sector: u64::from(volume.sector_size()),
            cache,
            volume,
            size,
            partial: tokio::sync::Mutex::new(()),
        })
    }

    pub fn cache(&self) -> &Arc<BlockCache<S>> {
        &self.cache
    }

    /// The whole sectors around `[offset, offset + len)`.
    fn sectors(&self, offset: u64, len: usize) -> (u64, u64) {
        let start = offset - offset % self.sector;
        let end = (offset + len as u64).div_ceil(self.sector) * self.sector;
        (start, end.min(self.size))
    }

    async fn read_sectors(&self, start: u64, end: u64) -> Result<Vec<u8>, String> {
        let mut buf = self
            .cache
            .read(self.volume.data_offset() + start, (end - start) as usize)
            .await
            .map_err(|e| e.to_string())?;
        self.volume
            .decrypt(start, &mut buf)
            .map_err(|e| e.to_string())?;
        Ok(buf)
    }

    async fn write_sectors(&self, start: u64, mut buf: Vec<u8>) -> Result<(), String> {
        self.volume
            .encrypt(start, &mut buf)
            .map_err(|e| e.to_string())?;
        self.cache
            .write(self.volume.data_offset() + start, &buf)
            .await
            .map_err(|e| e.to_string())
    }
}

impl<S: Storage> Device for CryptDevice<S> {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(self: Arc<Self>, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let (start, end) = self.sectors(offset, len);
        let mut buf = self.read_sectors(start, end).await?;
        buf.drain(..(offset - start) as usize);
        buf.truncate(len);
        Ok(buf)
    }

    async fn write(self: Arc<Self>, offset: u64, data: Vec<u8>) -> Result<(), String> {
        let (start, end) = self.sectors(offset, data.len());
        if start == offset && end == offset + data.len() as u64 {
            return self.write_sectors(start, data).await;
        }
        // Not whole sectors (the loop device always writes whole ones; a direct writer of
        // the FUSE file may not): read, patch, write back.
        let _one = self.partial.lock().await;
        let mut buf = self.read_sectors(start, end).await?;
        let at = (offset - start) as usize;
        buf.get_mut(at..at + data.len())
            .ok_or("write past the device")?
            .copy_from_slice(&data);
        self.write_sectors(start, buf).await
    }

    async fn flush(self: Arc<Self>) -> Result<(), String> {
        self.cache.flush().await.map_err(|e| e.to_string())
    }
}

/// The image as it is, for dm-crypt to decrypt (`--crypt kernel`).
pub struct RawDevice<S: Storage> {
    cache: Arc<BlockCache<S>>,
}

impl<S: Storage> RawDevice<S> {
    pub fn new(cache: Arc<BlockCache<S>>) -> Self {
        RawDevice { cache }
    }
}

impl<S: Storage> Device for RawDevice<S> {
    fn size(&self) -> u64 {
        self.cache.size()
    }

    async fn read(self: Arc<Self>, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        self.cache
            .read(offset, len)
            .await
            .map_err(|e| e.to_string())
    }

    async fn write(self: Arc<Self>, offset: u64, data: Vec<u8>) -> Result<(), String> {
        // The cache keeps whole pages itself (a partial one is completed from storage).
        self.cache
            .write(offset, &data)
            .await
            .map_err(|e| e.to_string())
    }

    async fn flush(self: Arc<Self>) -> Result<(), String> {
        self.cache.flush().await.map_err(|e| e.to_string())
    }
}
