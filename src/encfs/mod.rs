//! Encrypted remote filesystems: a drop-in for the `encfs` sidecar of Microsoft's
//! confidential-sidecar-containers, and the tooling that makes its images.
//!
//! # Owns
//! - `args`: `EncfsSideCarArgs`, upstream's configuration, decoded and checked once.
//! - `passphrase`: the LUKS passphrase from a released key (oct bytes, HKDF of an RSA key's
//!   private exponent, or a KBS resource), as upstream derives it.
//! - `luks2`: LUKS2 headers from untrusted storage, validated whole and then used only as the
//!   validated in-memory copy; keyslot unlocking; [`luks2::Volume`], the sector crypto of an
//!   unlocked data segment.
//! - `xts`: AES-XTS over one sector.
//! - `format`, `image`: new images (`aasp encfs create`) and offline checks (`aasp encfs check`).
//! - `blob`: Azure Blob Storage (HEAD, ranged GET, Put Page, Put Blob), credentials and retries.
//! - `cache`: the bounded block cache between a blob and the FUSE file: read-ahead, write-back.
//! - `fuse`: one device served as a FUSE file; `mount`, `sys`: loop devices, ext4 mounts and
//!   upstream's symlink contract, undone step by step.
//!
//! # The volume API (what the mount side uses)
//! Read the image's first [`luks2::BINARY_HEADER_LEN`] bytes and call
//! [`luks2::Luks2Header::parse`]; while it answers [`luks2::Luks2Error::Truncated`], read the
//! first `needed` bytes and call it again (at most twice, never past [`luks2::MAX_READ`]).
//! Reading the first MiB at once answers in one call for aasp's images and for cryptsetup's
//! default layout (keyslot 0 ends at 284 KiB).
//! [`luks2::Luks2Header::unlock`] (seconds of KDF: a blocking thread) gives a
//! [`luks2::Volume`]: `data_offset`, `sector_size`, `data_size(device_size)`, and in-place
//! `decrypt`/`encrypt` of whole sectors at an offset relative to the data. For the kernel path,
//! [`luks2::Luks2Header::to_bytes`] is the detached header for `cryptsetup open --header`: only
//! what was validated, zeros elsewhere.
//!
//! # Must not know
//! gRPC or REST; which backend released the key (it gets a [`passphrase::Passphrase`] or the
//! released JWK). HTTP only in `blob`.

pub mod args;
pub mod blob;
pub mod cache;
pub mod device;
pub mod format;
pub mod fuse;
pub mod image;
pub mod luks2;
pub mod mount;
pub mod passphrase;
pub mod sys;
pub mod xts;
