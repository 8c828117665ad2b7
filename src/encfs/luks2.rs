//! LUKS2 headers from untrusted storage: read once, validated whole, then only the validated
//! in-memory copy is used (to unlock, and as the detached header handed to `cryptsetup`).
//!
//! The format is cryptsetup's (`docs/on-disk-format-luks2.pdf`, `lib/luks2/luks2.h`,
//! `luks2_disk_metadata.c`, `luks2_json_metadata.c`, `luks2_keyslot_luks2.c`,
//! `luks2_digest_pbkdf2.c`, `lib/luks1/af.c`):
//! - two copies of the metadata: a 4096-byte binary header (big-endian; magic `LUKS\xba\xbe` /
//!   `SKUL\xba\xbe`, `hdr_size`, `seqid`, `checksum_alg`, `hdr_offset`, a checksum over the binary
//!   header with the checksum zeroed plus the JSON area), each followed by its JSON area; the
//!   second copy starts at `hdr_size`;
//! - the keyslots area from `2 * hdr_size`, `config.keyslots_size` long; a keyslot holds the
//!   volume key split into 4000 stripes (the anti-forensic splitter, `af.c`), encrypted with a
//!   key derived from the passphrase (PBKDF2 or Argon2), as 512-byte `plain64` sectors counted
//!   from the area's start;
//! - a `pbkdf2` digest of the volume key, which tells the right key from a wrong one;
//! - the data segment at `segments.0.offset`.
//!
//! What aasp accepts is narrower than what cryptsetup accepts, because the header comes from
//! storage an attacker may write (the CVE-2025-59054 class: a `cipher_null` segment makes an
//! "encrypted" volume that any passphrase opens and that stores plaintext):
//! - both binary headers must have valid checksums and agree (same `seqid`, same JSON);
//! - exactly one segment, `crypt`, `aes-xts-plain64`, no integrity, no flags;
//! - every keyslot `luks2` with `aes-xts-plain64` areas, PBKDF2 (SHA-1/256/512) or Argon2i/id;
//! - digests `pbkdf2`; the volume key a keyslot yields must match a digest bound to segment 0;
//! - no `requirements.mandatory` (a reencryption in progress, or features aasp does not know);
//! - no tokens (they steer cryptsetup's unlocking, which aasp does not use);
//! - areas inside the keyslots area, not overlapping, KDF costs bounded (below).

use super::passphrase::Passphrase;
use super::xts::Xts;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use zeroize::Zeroizing;

/// Length of the binary header; read at least this much first.
pub const BINARY_HEADER_LEN: usize = 4096;
/// The unit of `plain64` IVs and of keyslot-area sectors.
pub const IV_UNIT: u64 = 512;
/// Stripes of the anti-forensic split; cryptsetup uses this fixed number whatever the JSON says.
pub const STRIPES: usize = 4000;
/// Salt length of keyslot KDFs and digests.
pub const SALT_LEN: usize = 32;
/// Most bytes [`Luks2Header::parse`] asks for: both metadata copies (4 MiB each at most) and
/// the keyslot areas in use. cryptsetup's default layout needs 16 MiB + 32 KiB in the worst case
/// (32 keyslots); anything past this bound is refused rather than read.
pub const MAX_READ: u64 = 32 << 20;
/// Highest Argon2 memory cost accepted, in KiB: cryptsetup's default maximum (1 GiB), so every
/// image made with cryptsetup's defaults opens, and a hostile header cannot ask for more.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1 << 20;
/// Highest Argon2 time cost accepted.
pub const MAX_ARGON2_TIME: u32 = 1000;
/// Highest Argon2 work accepted, passes × memory in KiB: 16 passes over 1 GiB. cryptsetup's
/// 2-second benchmark picks 1 GiB with 4 to 10 passes on current CPUs (less memory, more passes
/// on small machines), so its images fit; a hostile header cannot ask for minutes per keyslot.
pub const MAX_ARGON2_WORK: u64 = 16 << 20;
/// Highest Argon2 parallelism accepted (cryptsetup's own maximum).
pub const MAX_ARGON2_CPUS: u32 = 16;
/// Highest PBKDF2 iteration count accepted, for a keyslot or a digest: above anything
/// cryptsetup's 2-second benchmark picks on current CPUs, and a bound on a hostile header.
pub const MAX_PBKDF2_ITERATIONS: u32 = 50_000_000;

const MAGIC_PRIMARY: &[u8; 6] = b"LUKS\xba\xbe";
const MAGIC_SECONDARY: &[u8; 6] = b"SKUL\xba\xbe";
/// The metadata sizes cryptsetup allows (`LUKS2_check_metadata_area_size`).
const HDR_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];
const MAX_KEYSLOTS_SIZE: u64 = 128 << 20;
const MAX_OBJECTS: usize = 32;
const MAX_DIGESTS: usize = 8;
/// Offsets in the binary header.
const OFF_VERSION: usize = 6;
const OFF_HDR_SIZE: usize = 8;
const OFF_SEQID: usize = 16;
const OFF_CHECKSUM_ALG: usize = 72;
const OFF_UUID: usize = 168;
const OFF_HDR_OFFSET: usize = 256;
const OFF_CSUM: usize = 448;
const CSUM_LEN: usize = 64;

/// Why a header is refused or a passphrase does not open it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Luks2Error {
    #[error("need the image's first {needed} bytes to read its LUKS2 header")]
    Truncated { needed: u64 },
    #[error("not a LUKS2 image: {0}")]
    NotLuks2(String),
    #[error(
        "the {which} LUKS2 header's checksum does not match: the header is damaged or was altered"
    )]
    Checksum { which: &'static str },
    #[error("the two LUKS2 header copies disagree ({0}): an interrupted update; repair the image with `cryptsetup repair`")]
    CopiesDisagree(&'static str),
    #[error("LUKS2 JSON area: {0}")]
    Json(String),
    #[error("the LUKS2 header uses cipher {0:?}, which does not encrypt: refused (CVE-2025-59054 class)")]
    CipherNull(String),
    #[error("the LUKS2 header uses {what} {value:?}; aasp opens only {supported}")]
    Unsupported {
        what: &'static str,
        value: String,
        supported: &'static str,
    },
    #[error("the LUKS2 header requires {0:?}, which aasp does not support (finish a reencryption with cryptsetup first)")]
    Requirement(String),
    #[error("LUKS2 {what} out of bounds: {detail}")]
    Bounds { what: &'static str, detail: String },
    #[error("no keyslot opens with this passphrase ({tried} tried)")]
    WrongPassphrase { tried: usize },
    #[error("the volume key from keyslot {0} does not match the header's digest")]
    DigestMismatch(u32),
    #[error("key derivation failed: {0}")]
    Kdf(String),
    #[error(
        "access at byte {offset}, length {len} is not aligned to the {sector_size}-byte sector"
    )]
    Misaligned {
        offset: u64,
        len: usize,
        sector_size: u32,
    },
}

type Result<T, E = Luks2Error> = std::result::Result<T, E>;

/// A hash LUKS2 names by string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha256,
    Sha512,
}

impl Hash {
    fn parse(name: &str, what: &'static str) -> Result<Self> {
        match name {
            "sha1" => Ok(Hash::Sha1),
            "sha256" => Ok(Hash::Sha256),
            "sha512" => Ok(Hash::Sha512),
            other => Err(Luks2Error::Unsupported {
                what,
                value: other.to_owned(),
                supported: "sha1, sha256 or sha512",
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Hash::Sha1 => "sha1",
            Hash::Sha256 => "sha256",
            Hash::Sha512 => "sha512",
        }
    }

    fn digest_alg(self) -> &'static aws_lc_rs::digest::Algorithm {
        match self {
            Hash::Sha1 => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha256 => &aws_lc_rs::digest::SHA256,
            Hash::Sha512 => &aws_lc_rs::digest::SHA512,
        }
    }

    fn pbkdf2_alg(self) -> aws_lc_rs::pbkdf2::Algorithm {
        match self {
            Hash::Sha1 => aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA1,
            Hash::Sha256 => aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
            Hash::Sha512 => aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    pub fn output_len(self) -> usize {
        self.digest_alg().output_len()
    }
}

/// A keyslot's key derivation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kdf {
    Pbkdf2 {
        hash: Hash,
        iterations: u32,
        salt: [u8; SALT_LEN],
    },
    Argon2 {
        id: bool,
        time: u32,
        memory_kib: u32,
        cpus: u32,
        salt: [u8; SALT_LEN],
    },
}

impl Kdf {
    /// Derives `out.len()` bytes from `passphrase`, as cryptsetup's `crypt_pbkdf` does.
    pub fn derive(&self, passphrase: &[u8], out: &mut [u8]) -> Result<()> {
        match self {
            Kdf::Pbkdf2 {
                hash,
                iterations,
                salt,
            } => {
                pbkdf2(*hash, *iterations, salt, passphrase, out);
                Ok(())
            }
            Kdf::Argon2 {
                id,
                time,
                memory_kib,
                cpus,
                salt,
            } => {
                let algorithm = if *id {
                    argon2::Algorithm::Argon2id
                } else {
                    argon2::Algorithm::Argon2i
                };
                let params = argon2::Params::new(*memory_kib, *time, *cpus, Some(out.len()))
                    .map_err(|e| Luks2Error::Kdf(e.to_string()))?;
                argon2::Argon2::new(algorithm, argon2::Version::V0x13, params)
                    .hash_password_into(passphrase, salt, out)
                    .map_err(|e| Luks2Error::Kdf(e.to_string()))
            }
        }
    }
}

fn pbkdf2(hash: Hash, iterations: u32, salt: &[u8], secret: &[u8], out: &mut [u8]) {
    // Validation keeps iterations ≥ 1; the fallback only gives the type its proof.
    let iterations = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
    aws_lc_rs::pbkdf2::derive(hash.pbkdf2_alg(), iterations, salt, secret, out);
}

/// A validated keyslot.
#[derive(Debug, Clone)]
struct Keyslot {
    id: u32,
    /// Volume key length.
    key_size: usize,
    af_hash: Hash,
    area_offset: u64,
    area_key_size: usize,
    kdf: Kdf,
    /// cryptsetup's priority: 0 = tried only when named, 1 = normal, 2 = first.
    priority: u8,
}

impl Keyslot {
    /// Bytes of the split key material in the area, rounded up to whole sectors.
    fn af_len(&self) -> u64 {
        af_len(self.key_size)
    }
}

fn af_len(key_size: usize) -> u64 {
    (key_size as u64 * STRIPES as u64).div_ceil(IV_UNIT) * IV_UNIT
}

/// A validated `pbkdf2` digest bound to segment 0.
#[derive(Debug, Clone)]
struct Digest {
    keyslots: Vec<u32>,
    hash: Hash,
    iterations: u32,
    salt: [u8; SALT_LEN],
    digest: Vec<u8>,
}

/// The validated data segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    offset: u64,
    /// `None`: "dynamic", to the end of the device.
    size: Option<u64>,
    iv_tweak: u64,
    sector_size: u32,
}

/// A LUKS2 header that passed every check of the module doc. Only this copy is used afterwards.
#[derive(Clone)]
pub struct Luks2Header {
    /// The image's first bytes as read: both metadata copies and the keyslot areas in use.
    bytes: Vec<u8>,
    hdr_size: u64,
    keyslots_size: u64,
    uuid: String,
    keyslots: Vec<Keyslot>,
    digests: Vec<Digest>,
    segment: Segment,
}

impl std::fmt::Debug for Luks2Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Luks2Header")
            .field("uuid", &self.uuid)
            .field("hdr_size", &self.hdr_size)
            .field("keyslots", &self.keyslots.len())
            .field("segment", &self.segment)
            .finish()
    }
}

impl Luks2Header {
    /// Parses and validates the header from the image's first bytes.
    ///
    /// Call it with the first [`BINARY_HEADER_LEN`] bytes (or more); while it answers
    /// [`Luks2Error::Truncated`], read the first `needed` bytes and call it again. It asks at
    /// most twice (both metadata copies, then the keyslot areas), never for more than
    /// [`MAX_READ`]. Bytes past what it needs are ignored.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let primary = BinaryHeader::read(bytes, 0)?;
        let hdr_size = primary.hdr_size;
        let metadata_len = 2 * hdr_size;
        let metadata = prefix(bytes, metadata_len)?;
        let (primary_area, secondary_area) =
            metadata
                .split_at_checked(usize_of(hdr_size)?)
                .ok_or(Luks2Error::Truncated {
                    needed: metadata_len,
                })?;
        let secondary = BinaryHeader::read(secondary_area, hdr_size)?;
        primary.verify_checksum(primary_area, "primary")?;
        secondary.verify_checksum(secondary_area, "secondary")?;
        if secondary.hdr_size != hdr_size {
            return Err(Luks2Error::CopiesDisagree("hdr_size"));
        }
        if secondary.seqid != primary.seqid {
            return Err(Luks2Error::CopiesDisagree("seqid"));
        }
        let json_primary = json_text(primary_area)?;
        if json_text(secondary_area)? != json_primary {
            return Err(Luks2Error::CopiesDisagree("JSON metadata"));
        }
        let json: JsonHeader =
            serde_json::from_slice(json_primary).map_err(|e| Luks2Error::Json(e.to_string()))?;
        let validated = Validated::from_json(json, hdr_size)?;
        let needed = validated
            .keyslots
            .iter()
            .map(|k| k.area_offset + k.af_len())
            .fold(metadata_len, u64::max);
        if needed > MAX_READ {
            return Err(Luks2Error::Bounds {
                what: "keyslot area",
                detail: format!("keyslot areas end at {needed}, past the {MAX_READ} bytes read"),
            });
        }
        let kept = prefix(bytes, needed)?;
        Ok(Luks2Header {
            bytes: kept.to_vec(),
            hdr_size,
            keyslots_size: validated.keyslots_size,
            uuid: primary.uuid,
            keyslots: validated.keyslots,
            digests: validated.digests,
            segment: validated.segment,
        })
    }

    /// Size of a detached header file for this image: both metadata copies and the whole
    /// keyslots area (`cryptsetup open --header` reads keyslots at their image offsets).
    pub fn header_size(&self) -> u64 {
        2 * self.hdr_size + self.keyslots_size
    }

    /// The metadata size of one copy (`hdr_size`: binary header plus JSON area).
    pub fn metadata_size(&self) -> u64 {
        self.hdr_size
    }

    /// The header's UUID (as `cryptsetup luksUUID` prints it).
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// Where the encrypted payload starts in the image, in bytes.
    pub fn data_offset(&self) -> u64 {
        self.segment.offset
    }

    /// The validated copy as a detached header, [`Self::header_size`] bytes: the two metadata
    /// copies and the validated keyslots' areas as read, zeros everywhere else, so nothing that
    /// was not checked reaches `cryptsetup`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; usize_of(self.header_size()).unwrap_or(0)];
        let metadata = usize_of(2 * self.hdr_size).unwrap_or(0);
        copy_range(&mut out, &self.bytes, 0, metadata);
        for slot in &self.keyslots {
            let (Ok(start), Ok(len)) = (usize_of(slot.area_offset), usize_of(slot.af_len())) else {
                continue;
            };
            copy_range(&mut out, &self.bytes, start, len);
        }
        out
    }

    /// Tries the keyslots (priority 2 first, then 1; priority 0 is skipped as cryptsetup skips
    /// it) and returns the volume of the first that opens and whose key matches its digest.
    /// This runs the KDF: seconds of CPU, call it from a blocking thread.
    pub fn unlock(&self, passphrase: &Passphrase) -> Result<Volume> {
        let mut order: Vec<&Keyslot> = self.keyslots.iter().filter(|k| k.priority > 0).collect();
        order.sort_by_key(|k| std::cmp::Reverse(k.priority));
        for slot in &order {
            match self.open_keyslot(slot, passphrase.expose()) {
                Ok(key) => return Volume::new(&key, self.segment),
                Err(Luks2Error::DigestMismatch(_)) => continue,
                Err(other) => return Err(other),
            }
        }
        Err(Luks2Error::WrongPassphrase { tried: order.len() })
    }

    /// The volume key from one keyslot, checked against the digest bound to it.
    fn open_keyslot(&self, slot: &Keyslot, passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let mut derived = Zeroizing::new(vec![0u8; slot.area_key_size]);
        slot.kdf.derive(passphrase, &mut derived)?;
        let area = self
            .bytes
            .get(usize_of(slot.area_offset)?..usize_of(slot.area_offset + slot.af_len())?)
            .ok_or(Luks2Error::Truncated {
                needed: slot.area_offset + slot.af_len(),
            })?;
        let mut material = Zeroizing::new(area.to_vec());
        let xts = Xts::new(&derived).map_err(|e| Luks2Error::Kdf(e.to_string()))?;
        for (sector, chunk) in material.chunks_mut(IV_UNIT as usize).enumerate() {
            xts.decrypt_unit(sector as u64, chunk)
                .map_err(|e| Luks2Error::Kdf(e.to_string()))?;
        }
        let key = af_merge(&material, slot.key_size, slot.af_hash);
        let digest = self
            .digests
            .iter()
            .find(|d| d.keyslots.contains(&slot.id))
            .ok_or(Luks2Error::DigestMismatch(slot.id))?;
        let mut check = Zeroizing::new(vec![0u8; digest.digest.len()]);
        pbkdf2(
            digest.hash,
            digest.iterations,
            &digest.salt,
            &key,
            &mut check,
        );
        if aws_lc_rs::constant_time::verify_slices_are_equal(&check, &digest.digest).is_err() {
            return Err(Luks2Error::DigestMismatch(slot.id));
        }
        Ok(key)
    }
}

/// Merges the anti-forensic stripes back into the key (`AF_merge` in cryptsetup's `af.c`).
pub(crate) fn af_merge(material: &[u8], key_size: usize, hash: Hash) -> Zeroizing<Vec<u8>> {
    let mut buf = Zeroizing::new(vec![0u8; key_size]);
    let mut stripes = material.chunks_exact(key_size).take(STRIPES);
    for _ in 0..STRIPES - 1 {
        if let Some(stripe) = stripes.next() {
            xor_in(&mut buf, stripe);
        }
        diffuse(&mut buf, hash);
    }
    if let Some(last) = stripes.next() {
        xor_in(&mut buf, last);
    }
    buf
}

/// Splits `key` into [`STRIPES`] stripes with random fill (`AF_split`); the result's length is
/// `key.len() * STRIPES`.
pub(crate) fn af_split(key: &[u8], hash: Hash) -> Result<Zeroizing<Vec<u8>>> {
    let key_size = key.len();
    let mut out = Zeroizing::new(vec![0u8; key_size * STRIPES]);
    aws_lc_rs::rand::fill(out.get_mut(..key_size * (STRIPES - 1)).unwrap_or_default())
        .map_err(|_| Luks2Error::Kdf("no randomness".into()))?;
    let mut buf = Zeroizing::new(vec![0u8; key_size]);
    let mut stripes = out.chunks_exact_mut(key_size);
    for _ in 0..STRIPES - 1 {
        if let Some(stripe) = stripes.next() {
            xor_in(&mut buf, stripe);
        }
        diffuse(&mut buf, hash);
    }
    if let Some(last) = stripes.next() {
        for ((o, b), k) in last.iter_mut().zip(buf.iter()).zip(key) {
            *o = b ^ k;
        }
    }
    Ok(out)
}

fn xor_in(buf: &mut [u8], other: &[u8]) {
    for (b, o) in buf.iter_mut().zip(other) {
        *b ^= o;
    }
}

/// cryptsetup's `diffuse`: each digest-sized block i (the last one possibly shorter) becomes
/// H(be32(i) || block), cut to the block's length.
fn diffuse(buf: &mut [u8], hash: Hash) {
    let digest_len = hash.output_len();
    for (i, block) in buf.chunks_mut(digest_len).enumerate() {
        let mut ctx = aws_lc_rs::digest::Context::new(hash.digest_alg());
        ctx.update(&(i as u32).to_be_bytes());
        ctx.update(block);
        let out = ctx.finish();
        for (b, d) in block.iter_mut().zip(out.as_ref()) {
            *b = *d;
        }
    }
}

/// An unlocked data segment: decrypts and encrypts its sectors. The key zeroizes on drop.
pub struct Volume {
    xts: Xts,
    segment: Segment,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("data_offset", &self.segment.offset)
            .field("sector_size", &self.segment.sector_size)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Volume {
    fn new(key: &[u8], segment: Segment) -> Result<Self> {
        let xts = Xts::new(key).map_err(|e| Luks2Error::Kdf(e.to_string()))?;
        Ok(Volume { xts, segment })
    }

    /// A volume for `key` with the given layout (for writing new images).
    pub(crate) fn with_key(key: &[u8], offset: u64, sector_size: u32) -> Result<Self> {
        Volume::new(
            key,
            Segment {
                offset,
                size: None,
                iv_tweak: 0,
                sector_size,
            },
        )
    }

    /// Where the encrypted payload starts in the image, in bytes.
    pub fn data_offset(&self) -> u64 {
        self.segment.offset
    }

    /// The encryption sector size (512 to 4096).
    pub fn sector_size(&self) -> u32 {
        self.segment.sector_size
    }

    /// The payload's size in an image of `device_size` bytes: the segment's size, or for a
    /// "dynamic" segment everything after the data offset; whole sectors only, and never past
    /// the device's end.
    pub fn data_size(&self, device_size: u64) -> u64 {
        let available = device_size.saturating_sub(self.segment.offset);
        let size = self.segment.size.map_or(available, |s| s.min(available));
        size - size % u64::from(self.segment.sector_size)
    }

    /// Decrypts `buf` in place; `byte_offset` is relative to the data offset. Both it and the
    /// length must be whole sectors.
    pub fn decrypt(&self, byte_offset: u64, buf: &mut [u8]) -> Result<()> {
        self.crypt(byte_offset, buf, false)
    }

    /// Encrypts `buf` in place; as [`Self::decrypt`].
    pub fn encrypt(&self, byte_offset: u64, buf: &mut [u8]) -> Result<()> {
        self.crypt(byte_offset, buf, true)
    }

    fn crypt(&self, byte_offset: u64, buf: &mut [u8], encrypt: bool) -> Result<()> {
        let sector_size = self.segment.sector_size;
        let len = buf.len();
        let misaligned = || Luks2Error::Misaligned {
            offset: byte_offset,
            len,
            sector_size,
        };
        if byte_offset % u64::from(sector_size) != 0 || buf.len() % sector_size as usize != 0 {
            return Err(misaligned());
        }
        // plain64 counts 512-byte units even when sectors are larger (LUKS2 never sets dm-crypt's
        // iv_large_sectors), plus the segment's iv_tweak.
        let mut iv = self.segment.iv_tweak.wrapping_add(byte_offset / IV_UNIT);
        let step = u64::from(sector_size) / IV_UNIT;
        for sector in buf.chunks_mut(sector_size as usize) {
            if encrypt {
                self.xts.encrypt_unit(iv, sector)
            } else {
                self.xts.decrypt_unit(iv, sector)
            }
            .map_err(|_| misaligned())?;
            iv = iv.wrapping_add(step);
        }
        Ok(())
    }
}

/// One binary header, as read.
struct BinaryHeader {
    hdr_size: u64,
    seqid: u64,
    checksum_alg: Hash,
    uuid: String,
}

impl BinaryHeader {
    /// Reads the binary header at `offset` in the image from `area` (which starts there).
    fn read(area: &[u8], offset: u64) -> Result<Self> {
        let bin = area.get(..BINARY_HEADER_LEN).ok_or(Luks2Error::Truncated {
            needed: offset + BINARY_HEADER_LEN as u64,
        })?;
        let (magic, which) = if offset == 0 {
            (MAGIC_PRIMARY, "primary")
        } else {
            (MAGIC_SECONDARY, "secondary")
        };
        if bin.get(..6) != Some(magic.as_slice()) {
            return Err(Luks2Error::NotLuks2(format!(
                "no {which} LUKS2 magic at byte {offset}"
            )));
        }
        let version = u16::from_be_bytes(array(bin, OFF_VERSION)?);
        if version != 2 {
            return Err(Luks2Error::NotLuks2(format!(
                "{which} header version {version}, not 2 (a LUKS1 image? convert it with `cryptsetup convert --type luks2`)"
            )));
        }
        let hdr_size = u64::from_be_bytes(array(bin, OFF_HDR_SIZE)?);
        if !HDR_SIZES.contains(&hdr_size) {
            return Err(Luks2Error::NotLuks2(format!(
                "{which} header size {hdr_size} is not one LUKS2 allows (16 KiB to 4 MiB, powers of two)"
            )));
        }
        let hdr_offset = u64::from_be_bytes(array(bin, OFF_HDR_OFFSET)?);
        if hdr_offset != offset || (offset != 0 && offset != hdr_size) {
            return Err(Luks2Error::NotLuks2(format!(
                "{which} header says it is at byte {hdr_offset}, found at {offset}"
            )));
        }
        let checksum_alg = Hash::parse(&c_string(bin, OFF_CHECKSUM_ALG, 32)?, "checksum_alg")?;
        Ok(BinaryHeader {
            hdr_size,
            seqid: u64::from_be_bytes(array(bin, OFF_SEQID)?),
            checksum_alg,
            uuid: c_string(bin, OFF_UUID, 40)?,
        })
    }

    /// `area` is this copy's binary header and JSON area (`hdr_size` bytes).
    fn verify_checksum(&self, area: &[u8], which: &'static str) -> Result<()> {
        let (bin, json) =
            area.split_at_checked(BINARY_HEADER_LEN)
                .ok_or(Luks2Error::Truncated {
                    needed: self.hdr_size,
                })?;
        let stored = bin
            .get(OFF_CSUM..OFF_CSUM + self.checksum_alg.output_len())
            .ok_or(Luks2Error::Checksum { which })?;
        let computed = header_checksum(self.checksum_alg, bin, json);
        if computed.as_slice() != stored {
            return Err(Luks2Error::Checksum { which });
        }
        Ok(())
    }
}

/// The checksum of one metadata copy: its binary header with the checksum field zeroed, then its
/// JSON area.
pub(crate) fn header_checksum(hash: Hash, bin: &[u8], json_area: &[u8]) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(hash.digest_alg());
    ctx.update(bin.get(..OFF_CSUM).unwrap_or_default());
    ctx.update(&[0u8; CSUM_LEN]);
    ctx.update(bin.get(OFF_CSUM + CSUM_LEN..).unwrap_or_default());
    ctx.update(json_area);
    ctx.finish().as_ref().to_vec()
}

/// Byte offsets of the binary header's fields, for the writer.
pub(crate) mod layout {
    pub const VERSION: usize = super::OFF_VERSION;
    pub const HDR_SIZE: usize = super::OFF_HDR_SIZE;
    pub const SEQID: usize = super::OFF_SEQID;
    pub const CHECKSUM_ALG: usize = super::OFF_CHECKSUM_ALG;
    pub const SALT: usize = 104;
    pub const UUID: usize = super::OFF_UUID;
    pub const HDR_OFFSET: usize = super::OFF_HDR_OFFSET;
    pub const CSUM: usize = super::OFF_CSUM;
    pub const MAGIC_PRIMARY: &[u8; 6] = super::MAGIC_PRIMARY;
    pub const MAGIC_SECONDARY: &[u8; 6] = super::MAGIC_SECONDARY;
}

/// The JSON text of one copy: up to the first NUL of its JSON area.
fn json_text(area: &[u8]) -> Result<&[u8]> {
    let json = area.get(BINARY_HEADER_LEN..).unwrap_or_default();
    let end = json.iter().position(|b| *b == 0).unwrap_or(json.len());
    Ok(json.get(..end).unwrap_or_default())
}

fn prefix(bytes: &[u8], len: u64) -> Result<&[u8]> {
    usize_of(len)
        .ok()
        .and_then(|n| bytes.get(..n))
        .ok_or(Luks2Error::Truncated { needed: len })
}

fn usize_of(value: u64) -> Result<usize> {
    usize::try_from(value).map_err(|_| Luks2Error::Bounds {
        what: "offset",
        detail: format!("{value} does not fit this machine's address space"),
    })
}

fn copy_range(out: &mut [u8], from: &[u8], start: usize, len: usize) {
    let end = start.saturating_add(len);
    if let (Some(dst), Some(src)) = (out.get_mut(start..end), from.get(start..end)) {
        dst.copy_from_slice(src);
    }
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N]> {
    bytes
        .get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(Luks2Error::Truncated {
            needed: (at + N) as u64,
        })
}

/// A NUL-terminated string field of `len` bytes.
fn c_string(bytes: &[u8], at: usize, len: usize) -> Result<String> {
    let field = bytes.get(at..at + len).ok_or(Luks2Error::Truncated {
        needed: (at + len) as u64,
    })?;
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    let text = field.get(..end).unwrap_or_default();
    std::str::from_utf8(text)
        .map(str::to_owned)
        .map_err(|_| Luks2Error::NotLuks2("a header string field is not UTF-8".into()))
}

// ---- The JSON area: deserialized loosely, then validated into the types above. ----

#[derive(Deserialize)]
struct JsonHeader {
    keyslots: BTreeMap<String, JsonKeyslot>,
    #[serde(default)]
    tokens: BTreeMap<String, serde_json::Value>,
    segments: BTreeMap<String, JsonSegment>,
    digests: BTreeMap<String, JsonDigest>,
    config: JsonConfig,
}

#[derive(Deserialize)]
struct JsonKeyslot {
    #[serde(rename = "type")]
    kind: String,
    key_size: u32,
    af: JsonAf,
    area: JsonArea,
    kdf: JsonKdf,
    #[serde(default)]
    priority: Option<u8>,
}

#[derive(Deserialize)]
struct JsonAf {
    #[serde(rename = "type")]
    kind: String,
    stripes: u32,
    hash: String,
}

#[derive(Deserialize)]
struct JsonArea {
    #[serde(rename = "type")]
    kind: String,
    offset: String,
    size: String,
    encryption: String,
    key_size: u32,
}

#[derive(Deserialize)]
struct JsonKdf {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    iterations: Option<u32>,
    #[serde(default)]
    time: Option<u32>,
    #[serde(default)]
    memory: Option<u32>,
    #[serde(default)]
    cpus: Option<u32>,
    salt: String,
}

#[derive(Deserialize)]
struct JsonSegment {
    #[serde(rename = "type")]
    kind: String,
    offset: String,
    size: String,
    #[serde(default)]
    iv_tweak: Option<String>,
    #[serde(default)]
    encryption: Option<String>,
    #[serde(default)]
    sector_size: Option<u32>,
    #[serde(default)]
    integrity: Option<serde_json::Value>,
    #[serde(default)]
    flags: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct JsonDigest {
    #[serde(rename = "type")]
    kind: String,
    keyslots: Vec<String>,
    segments: Vec<String>,
    #[serde(default)]
    hash: Option<String>,
    #[serde(default)]
    iterations: Option<u32>,
    #[serde(default)]
    salt: Option<String>,
    #[serde(default)]
    digest: Option<String>,
}

#[derive(Deserialize)]
struct JsonConfig {
    json_size: String,
    keyslots_size: String,
    #[serde(default)]
    requirements: Option<JsonRequirements>,
}

#[derive(Deserialize)]
struct JsonRequirements {
    #[serde(default)]
    mandatory: Vec<String>,
}

struct Validated {
    keyslots_size: u64,
    keyslots: Vec<Keyslot>,
    digests: Vec<Digest>,
    segment: Segment,
}

/// The one cipher aasp accepts, for segments and keyslot areas.
pub const CIPHER: &str = "aes-xts-plain64";

impl Validated {
    fn from_json(json: JsonHeader, hdr_size: u64) -> Result<Self> {
        if let Some(requirement) = json
            .config
            .requirements
            .as_ref()
            .and_then(|r| r.mandatory.first())
        {
            return Err(Luks2Error::Requirement(requirement.clone()));
        }
        if !json.tokens.is_empty() {
            return Err(Luks2Error::Unsupported {
                what: "tokens",
                value: json.tokens.keys().cloned().collect::<Vec<_>>().join(","),
                supported: "headers without tokens (remove them with `cryptsetup token remove`)",
            });
        }
        let json_size = number(&json.config.json_size, "config.json_size")?;
        if json_size != hdr_size - BINARY_HEADER_LEN as u64 {
            return Err(Luks2Error::Bounds {
                what: "config.json_size",
                detail: format!(
                    "{json_size}, but the binary header's JSON area is {} bytes",
                    hdr_size - BINARY_HEADER_LEN as u64
                ),
            });
        }
        let keyslots_size = number(&json.config.keyslots_size, "config.keyslots_size")?;
        if keyslots_size % 4096 != 0 || keyslots_size > MAX_KEYSLOTS_SIZE {
            return Err(Luks2Error::Bounds {
                what: "config.keyslots_size",
                detail: format!("{keyslots_size} (a multiple of 4096, at most 128 MiB)"),
            });
        }
        let keyslots_start = 2 * hdr_size;
        let keyslots_end = keyslots_start + keyslots_size;
        let segment = segment(&json.segments, keyslots_end)?;
        let keyslots = keyslots(&json.keyslots, keyslots_start, keyslots_end)?;
        let digests = digests(&json.digests, &keyslots)?;
        let usable = keyslots
            .iter()
            .filter(|k| digests.iter().any(|d| d.keyslots.contains(&k.id)))
            .count();
        if usable == 0 {
            return Err(Luks2Error::Json(
                "no keyslot is bound to the data segment's digest: nothing can open it".into(),
            ));
        }
        // Every keyslot holds the same volume key.
        if let Some(first) = keyslots.first() {
            if let Some(k) = keyslots.iter().find(|k| k.key_size != first.key_size) {
                return Err(Luks2Error::Bounds {
                    what: "keyslot key_size",
                    detail: format!(
                        "keyslot {} holds {} bytes, keyslot {} {}",
                        k.id, k.key_size, first.id, first.key_size
                    ),
                });
            }
        }
        Ok(Validated {
            keyslots_size,
            keyslots,
            digests,
            segment,
        })
    }
}

fn segment(segments: &BTreeMap<String, JsonSegment>, keyslots_end: u64) -> Result<Segment> {
    let mut iter = segments.iter();
    let (Some((name, seg)), None) = (iter.next(), iter.next()) else {
        return Err(Luks2Error::Unsupported {
            what: "segment count",
            value: segments.len().to_string(),
            supported: "exactly one segment (a reencryption in progress has more)",
        });
    };
    if name != "0" {
        return Err(Luks2Error::Json(format!(
            "the only segment is {name:?}, not \"0\""
        )));
    }
    if seg.kind != "crypt" {
        return Err(Luks2Error::Unsupported {
            what: "segment type",
            value: seg.kind.clone(),
            supported: "crypt",
        });
    }
    let encryption = seg.encryption.as_deref().unwrap_or_default();
    check_cipher(encryption, "segment cipher")?;
    if seg.integrity.is_some() {
        return Err(Luks2Error::Unsupported {
            what: "segment integrity",
            value: "dm-integrity".into(),
            supported: "segments without integrity",
        });
    }
    if let Some(flag) = seg.flags.as_ref().and_then(|f| f.first()) {
        return Err(Luks2Error::Unsupported {
            what: "segment flag",
            value: flag.clone(),
            supported: "segments without flags",
        });
    }
    let sector_size = seg.sector_size.unwrap_or(0);
    if !matches!(sector_size, 512 | 1024 | 2048 | 4096) {
        return Err(Luks2Error::Bounds {
            what: "segment sector_size",
            detail: format!("{sector_size} (512, 1024, 2048 or 4096)"),
        });
    }
    let offset = number(&seg.offset, "segment offset")?;
    if offset < keyslots_end || offset % u64::from(sector_size) != 0 {
        return Err(Luks2Error::Bounds {
            what: "segment offset",
            detail: format!(
                "{offset}: must follow the keyslots area (ends at {keyslots_end}) and be a \
                 multiple of the sector size {sector_size}"
            ),
        });
    }
    let size = match seg.size.as_str() {
        "dynamic" => None,
        text => {
            let size = number(text, "segment size")?;
            if size % u64::from(sector_size) != 0 || offset.checked_add(size).is_none() {
                return Err(Luks2Error::Bounds {
                    what: "segment size",
                    detail: format!("{size} (whole sectors of {sector_size})"),
                });
            }
            Some(size)
        }
    };
    let iv_tweak = match seg.iv_tweak.as_deref() {
        Some(text) => number(text, "segment iv_tweak")?,
        None => return Err(Luks2Error::Json("segment 0 has no iv_tweak".into())),
    };
    Ok(Segment {
        offset,
        size,
        iv_tweak,
        sector_size,
    })
}

fn keyslots(slots: &BTreeMap<String, JsonKeyslot>, start: u64, end: u64) -> Result<Vec<Keyslot>> {
    if slots.len() > MAX_OBJECTS {
        return Err(Luks2Error::Bounds {
            what: "keyslots",
            detail: format!("{} (at most {MAX_OBJECTS})", slots.len()),
        });
    }
    let mut out: Vec<Keyslot> = Vec::new();
    let mut areas: Vec<(u64, u64)> = Vec::new();
    for (name, slot) in slots {
        let id = object_id(name, "keyslot")?;
        if slot.kind != "luks2" {
            return Err(Luks2Error::Unsupported {
                what: "keyslot type",
                value: slot.kind.clone(),
                supported: "luks2 (a reencrypt keyslot means a reencryption in progress)",
            });
        }
        check_cipher(&slot.area.encryption, "keyslot cipher")?;
        if slot.area.kind != "raw" {
            return Err(Luks2Error::Unsupported {
                what: "keyslot area type",
                value: slot.area.kind.clone(),
                supported: "raw",
            });
        }
        let key_size = xts_key_size(slot.key_size, "keyslot key_size")?;
        let area_key_size = xts_key_size(slot.area.key_size, "keyslot area key_size")?;
        if slot.af.kind != "luks1" || slot.af.stripes as usize != STRIPES {
            return Err(Luks2Error::Unsupported {
                what: "anti-forensic splitter",
                value: format!("{} with {} stripes", slot.af.kind, slot.af.stripes),
                supported: "luks1 with 4000 stripes",
            });
        }
        let af_hash = Hash::parse(&slot.af.hash, "af hash")?;
        let area_offset = number(&slot.area.offset, "keyslot area offset")?;
        let area_size = number(&slot.area.size, "keyslot area size")?;
        let area_end = area_offset.saturating_add(area_size);
        if area_offset < start
            || area_end > end
            || area_offset % IV_UNIT != 0
            || area_size < af_len(key_size)
        {
            return Err(Luks2Error::Bounds {
                what: "keyslot area",
                detail: format!(
                    "keyslot {id}: [{area_offset}, {area_end}) must lie in the keyslots area \
                     [{start}, {end}), start on a 512-byte boundary and hold {} bytes",
                    af_len(key_size)
                ),
            });
        }
        if let Some((o, e)) = areas
            .iter()
            .find(|(o, e)| area_offset < *e && *o < area_end)
        {
            return Err(Luks2Error::Bounds {
                what: "keyslot area",
                detail: format!("keyslot {id}'s area overlaps [{o}, {e})"),
            });
        }
        areas.push((area_offset, area_end));
        let kdf = kdf(&slot.kdf, id)?;
        let priority = slot.priority.unwrap_or(1);
        if priority > 2 {
            return Err(Luks2Error::Bounds {
                what: "keyslot priority",
                detail: format!("keyslot {id}: {priority} (0, 1 or 2)"),
            });
        }
        out.push(Keyslot {
            id,
            key_size,
            af_hash,
            area_offset,
            area_key_size,
            kdf,
            priority,
        });
    }
    Ok(out)
}

fn kdf(kdf: &JsonKdf, id: u32) -> Result<Kdf> {
    let salt = salt(&kdf.salt, "keyslot kdf salt")?;
    let missing = |field: &str| Luks2Error::Json(format!("keyslot {id} kdf has no {field}"));
    match kdf.kind.as_str() {
        "pbkdf2" => {
            let hash = Hash::parse(
                kdf.hash.as_deref().ok_or_else(|| missing("hash"))?,
                "kdf hash",
            )?;
            let iterations = kdf.iterations.ok_or_else(|| missing("iterations"))?;
            pbkdf2_bounds(iterations, "keyslot pbkdf2 iterations")?;
            Ok(Kdf::Pbkdf2 {
                hash,
                iterations,
                salt,
            })
        }
        "argon2i" | "argon2id" => {
            let time = kdf.time.ok_or_else(|| missing("time"))?;
            let memory_kib = kdf.memory.ok_or_else(|| missing("memory"))?;
            let cpus = kdf.cpus.ok_or_else(|| missing("cpus"))?;
            if !(1..=MAX_ARGON2_TIME).contains(&time)
                || !(1..=MAX_ARGON2_CPUS).contains(&cpus)
                || memory_kib < 8 * cpus
                || memory_kib > MAX_ARGON2_MEMORY_KIB
                || u64::from(time) * u64::from(memory_kib) > MAX_ARGON2_WORK
            {
                return Err(Luks2Error::Bounds {
                    what: "argon2 cost",
                    detail: format!(
                        "keyslot {id}: time {time}, memory {memory_kib} KiB, cpus {cpus} (time \
                         1..={MAX_ARGON2_TIME}, cpus 1..={MAX_ARGON2_CPUS}, memory 8×cpus..=\
                         {MAX_ARGON2_MEMORY_KIB} KiB, time × memory ≤ {MAX_ARGON2_WORK})"
                    ),
                });
            }
            Ok(Kdf::Argon2 {
                id: kdf.kind == "argon2id",
                time,
                memory_kib,
                cpus,
                salt,
            })
        }
        other => Err(Luks2Error::Unsupported {
            what: "keyslot kdf",
            value: other.to_owned(),
            supported: "pbkdf2, argon2i or argon2id",
        }),
    }
}

fn digests(digests: &BTreeMap<String, JsonDigest>, keyslots: &[Keyslot]) -> Result<Vec<Digest>> {
    if digests.len() > MAX_DIGESTS {
        return Err(Luks2Error::Bounds {
            what: "digests",
            detail: format!("{} (at most {MAX_DIGESTS})", digests.len()),
        });
    }
    let mut out = Vec::new();
    for (name, digest) in digests {
        object_id(name, "digest")?;
        if digest.kind != "pbkdf2" {
            return Err(Luks2Error::Unsupported {
                what: "digest type",
                value: digest.kind.clone(),
                supported: "pbkdf2",
            });
        }
        let missing = |field: &str| Luks2Error::Json(format!("digest {name} has no {field}"));
        let mut bound_slots = Vec::new();
        for slot in &digest.keyslots {
            let id = object_id(slot, "digest keyslot")?;
            if !keyslots.iter().any(|k| k.id == id) {
                return Err(Luks2Error::Json(format!(
                    "digest {name} names keyslot {id}, which does not exist"
                )));
            }
            bound_slots.push(id);
        }
        for seg in &digest.segments {
            if seg != "0" {
                return Err(Luks2Error::Json(format!(
                    "digest {name} names segment {seg:?}, which does not exist"
                )));
            }
        }
        if digest.segments.is_empty() {
            // A digest of no segment (cryptsetup's unbound keys) opens nothing here.
            continue;
        }
        let hash = Hash::parse(
            digest.hash.as_deref().ok_or_else(|| missing("hash"))?,
            "digest hash",
        )?;
        let iterations = digest.iterations.ok_or_else(|| missing("iterations"))?;
        pbkdf2_bounds(iterations, "digest iterations")?;
        let salt = salt(
            digest.salt.as_deref().ok_or_else(|| missing("salt"))?,
            "digest salt",
        )?;
        let value = STANDARD
            .decode(digest.digest.as_deref().ok_or_else(|| missing("digest"))?)
            .map_err(|_| Luks2Error::Json(format!("digest {name} is not base64")))?;
        // cryptsetup: 20 bytes (LUKS1's SHA-1 length) or the hash's length.
        if value.len() != 20 && value.len() != hash.output_len() {
            return Err(Luks2Error::Bounds {
                what: "digest length",
                detail: format!("digest {name}: {} bytes", value.len()),
            });
        }
        out.push(Digest {
            keyslots: bound_slots,
            hash,
            iterations,
            salt,
            digest: value,
        });
    }
    Ok(out)
}

fn check_cipher(cipher: &str, what: &'static str) -> Result<()> {
    if cipher.starts_with("cipher_null") || cipher == "null" {
        return Err(Luks2Error::CipherNull(cipher.to_owned()));
    }
    if cipher != CIPHER {
        return Err(Luks2Error::Unsupported {
            what,
            value: cipher.to_owned(),
            supported: CIPHER,
        });
    }
    Ok(())
}

fn xts_key_size(size: u32, what: &'static str) -> Result<usize> {
    match size {
        32 | 64 => Ok(size as usize),
        other => Err(Luks2Error::Bounds {
            what,
            detail: format!("{other} bytes (aes-xts takes 32 or 64)"),
        }),
    }
}

fn pbkdf2_bounds(iterations: u32, what: &'static str) -> Result<()> {
    if !(1..=MAX_PBKDF2_ITERATIONS).contains(&iterations) {
        return Err(Luks2Error::Bounds {
            what,
            detail: format!("{iterations} (1..={MAX_PBKDF2_ITERATIONS})"),
        });
    }
    Ok(())
}

fn salt(text: &str, what: &'static str) -> Result<[u8; SALT_LEN]> {
    STANDARD
        .decode(text)
        .ok()
        .and_then(|s| <[u8; SALT_LEN]>::try_from(s).ok())
        .ok_or_else(|| Luks2Error::Json(format!("{what} is not {SALT_LEN} bytes of base64")))
}

/// A decimal string as LUKS2 writes offsets and sizes (no sign, no leading junk).
fn number(text: &str, what: &'static str) -> Result<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Luks2Error::Json(format!(
            "{what} {text:?} is not a decimal number"
        )));
    }
    text.parse()
        .map_err(|_| Luks2Error::Json(format!("{what} {text:?} does not fit 64 bits")))
}

fn object_id(name: &str, what: &'static str) -> Result<u32> {
    let id = number(name, what)?;
    u32::try_from(id)
        .ok()
        .filter(|id| (*id as usize) < MAX_OBJECTS)
        .ok_or_else(|| Luks2Error::Json(format!("{what} id {name:?} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn af_split_then_merge_returns_the_key() {
        for hash in [Hash::Sha1, Hash::Sha256, Hash::Sha512] {
            let key: Vec<u8> = (0..64).collect();
            let split = af_split(&key, hash).unwrap();
            assert_eq!(split.len(), 64 * STRIPES);
            assert_eq!(af_merge(&split, 64, hash).as_slice(), key.as_slice());
            let mut flipped = split.to_vec();
            flipped[100] ^= 1;
            assert_ne!(af_merge(&flipped, 64, hash).as_slice(), key.as_slice());
        }
    }

    #[test]
    fn short_input_asks_for_more() {
        assert_eq!(
            Luks2Header::parse(&[0; 100]).unwrap_err(),
            Luks2Error::Truncated { needed: 4096 }
        );
        assert!(matches!(
            Luks2Header::parse(&[0; 4096]).unwrap_err(),
            Luks2Error::NotLuks2(_)
        ));
    }

    #[test]
    fn numbers_are_strict() {
        assert_eq!(number("16777216", "x").unwrap(), 16_777_216);
        for bad in ["", "-1", "+1", "0x10", "1 ", "99999999999999999999"] {
            assert!(number(bad, "x").is_err(), "{bad:?}");
        }
    }
}
