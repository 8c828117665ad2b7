//! Writing new LUKS2 images: the header (as `cryptsetup luksFormat` lays it out) and the
//! encrypted payload.
//!
//! The layout and parameters aasp writes, and why:
//! - 16 KiB metadata copies (cryptsetup's default), one keyslot at 32 KiB, data at 1 MiB; the
//!   keyslots area leaves room for three more keyslots (`cryptsetup luksAddKey`).
//! - `aes-xts-plain64` with a 512-bit key, 4096-byte sectors (what upstream's `generatefs.sh`
//!   uses, and ext4's block size).
//! - Keyslot KDF PBKDF2-SHA256, 1000 iterations (cryptsetup's minimum, and what upstream's
//!   `generatefs.sh` passes with `--pbkdf-force-iterations 1000`): the passphrase is a uniformly
//!   random 256-bit key (an oct key, or HKDF output), so stretching adds no security, only unlock
//!   time in the TEE; and every cryptsetup build accepts PBKDF2, including FIPS builds that
//!   refuse Argon2.
//! - A `pbkdf2` SHA-256 digest of the volume key, 1000 iterations (cryptsetup's minimum).

use super::luks2::{self, af_split, header_checksum, layout, Hash, Kdf, Luks2Error, Volume};
use super::passphrase::Passphrase;
use super::xts::Xts;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

/// One metadata copy (binary header + JSON area).
pub const HDR_SIZE: u64 = 16 << 10;
/// Where the encrypted payload starts.
pub const DATA_OFFSET: u64 = 1 << 20;
/// Encryption sector size of the payload.
pub const SECTOR_SIZE: u32 = 4096;
/// Volume key bytes: AES-256 in XTS mode takes two 256-bit keys.
pub const VOLUME_KEY_LEN: usize = 64;
/// PBKDF2 iterations of the keyslot and of the digest (see the module doc).
pub const PBKDF2_ITERATIONS: u32 = 1000;

const KEYSLOT_OFFSET: u64 = 2 * HDR_SIZE;

/// A new random volume key.
pub fn new_volume_key() -> Result<Zeroizing<Vec<u8>>, Luks2Error> {
    let mut key = Zeroizing::new(vec![0u8; VOLUME_KEY_LEN]);
    aws_lc_rs::rand::fill(&mut key).map_err(|_| Luks2Error::Kdf("no randomness".into()))?;
    Ok(key)
}

/// The image's first [`DATA_OFFSET`] bytes: both metadata copies and keyslot 0, which opens
/// with `passphrase` and holds `volume_key`. Returns them and the volume to encrypt the payload
/// with.
pub fn header(volume_key: &[u8], passphrase: &Passphrase) -> Result<(Vec<u8>, Volume), Luks2Error> {
    let hash = Hash::Sha256;
    let random = |len: usize| -> Result<Vec<u8>, Luks2Error> {
        let mut bytes = vec![0u8; len];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Luks2Error::Kdf("no randomness".into()))?;
        Ok(bytes)
    };
    let keyslot_salt: [u8; luks2::SALT_LEN] = random_array()?;
    let digest_salt: [u8; luks2::SALT_LEN] = random_array()?;

    // Keyslot 0: the split key, encrypted with the passphrase-derived key as 512-byte sectors.
    let kdf = Kdf::Pbkdf2 {
        hash,
        iterations: PBKDF2_ITERATIONS,
        salt: keyslot_salt,
    };
    let mut derived = Zeroizing::new(vec![0u8; VOLUME_KEY_LEN]);
    kdf.derive(passphrase.expose(), &mut derived)?;
    let mut material = af_split(volume_key, hash)?;
    let af_len = material.len() as u64;
    let area_size = af_len.div_ceil(4096) * 4096;
    let xts = Xts::new(&derived).map_err(|e| Luks2Error::Kdf(e.to_string()))?;
    for (sector, chunk) in material.chunks_mut(luks2::IV_UNIT as usize).enumerate() {
        xts.encrypt_unit(sector as u64, chunk)
            .map_err(|e| Luks2Error::Kdf(e.to_string()))?;
    }

    let mut digest = vec![0u8; hash.output_len()];
    aws_lc_rs::pbkdf2::derive(
        aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(PBKDF2_ITERATIONS).unwrap_or(std::num::NonZeroU32::MIN),
        &digest_salt,
        volume_key,
        &mut digest,
    );

    let json_size = HDR_SIZE - luks2::BINARY_HEADER_LEN as u64;
    let json = serde_json::json!({
        "keyslots": {"0": {
            "type": "luks2",
            "key_size": volume_key.len(),
            "af": {"type": "luks1", "stripes": luks2::STRIPES, "hash": hash.name()},
            "area": {
                "type": "raw",
                "offset": KEYSLOT_OFFSET.to_string(),
                "size": area_size.to_string(),
                "encryption": luks2::CIPHER,
                "key_size": VOLUME_KEY_LEN,
            },
            "kdf": {
                "type": "pbkdf2",
                "hash": hash.name(),
                "iterations": PBKDF2_ITERATIONS,
                "salt": STANDARD.encode(keyslot_salt),
            },
        }},
        "tokens": {},
        "segments": {"0": {
            "type": "crypt",
            "offset": DATA_OFFSET.to_string(),
            "size": "dynamic",
            "iv_tweak": "0",
            "encryption": luks2::CIPHER,
            "sector_size": SECTOR_SIZE,
        }},
        "digests": {"0": {
            "type": "pbkdf2",
            "keyslots": ["0"],
            "segments": ["0"],
            "hash": hash.name(),
            "iterations": PBKDF2_ITERATIONS,
            "salt": STANDARD.encode(digest_salt),
            "digest": STANDARD.encode(&digest),
        }},
        "config": {
            "json_size": json_size.to_string(),
            "keyslots_size": (DATA_OFFSET - KEYSLOT_OFFSET).to_string(),
        },
    })
    .to_string();

    let mut out = vec![0u8; DATA_OFFSET as usize];
    let uuid = uuid_v4(&random(16)?);
    for (offset, magic) in [
        (0, layout::MAGIC_PRIMARY),
        (HDR_SIZE, layout::MAGIC_SECONDARY),
    ] {
        let copy = out
            .get_mut(offset as usize..(offset + HDR_SIZE) as usize)
            .ok_or(Luks2Error::Truncated { needed: offset })?;
        write_metadata(copy, magic, offset, &uuid, &random(64)?, json.as_bytes())?;
    }
    let area = out
        .get_mut(KEYSLOT_OFFSET as usize..(KEYSLOT_OFFSET + af_len) as usize)
        .ok_or(Luks2Error::Truncated {
            needed: KEYSLOT_OFFSET + af_len,
        })?;
    area.copy_from_slice(&material);
    let volume = Volume::with_key(volume_key, DATA_OFFSET, SECTOR_SIZE)?;
    Ok((out, volume))
}

/// One metadata copy into `copy` (`HDR_SIZE` bytes, zeroed).
fn write_metadata(
    copy: &mut [u8],
    magic: &[u8; 6],
    offset: u64,
    uuid: &str,
    salt: &[u8],
    json: &[u8],
) -> Result<(), Luks2Error> {
    let too_big = || Luks2Error::Bounds {
        what: "JSON area",
        detail: format!("{} bytes of JSON", json.len()),
    };
    let put = |copy: &mut [u8], at: usize, bytes: &[u8]| {
        if let Some(dst) = copy.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    put(copy, 0, magic);
    put(copy, layout::VERSION, &2u16.to_be_bytes());
    put(copy, layout::HDR_SIZE, &HDR_SIZE.to_be_bytes());
    put(copy, layout::SEQID, &1u64.to_be_bytes());
    put(copy, layout::CHECKSUM_ALG, b"sha256");
    put(copy, layout::SALT, salt);
    put(copy, layout::UUID, uuid.as_bytes());
    put(copy, layout::HDR_OFFSET, &offset.to_be_bytes());
    let (bin, json_area) = copy
        .split_at_mut_checked(luks2::BINARY_HEADER_LEN)
        .ok_or_else(too_big)?;
    json_area
        .get_mut(..json.len())
        .filter(|_| json.len() < json_area_len())
        .ok_or_else(too_big)?
        .copy_from_slice(json);
    let checksum = header_checksum(Hash::Sha256, bin, json_area);
    put(bin, layout::CSUM, &checksum);
    Ok(())
}

fn json_area_len() -> usize {
    HDR_SIZE as usize - luks2::BINARY_HEADER_LEN
}

fn random_array<const N: usize>() -> Result<[u8; N], Luks2Error> {
    let mut out = [0u8; N];
    aws_lc_rs::rand::fill(&mut out).map_err(|_| Luks2Error::Kdf("no randomness".into()))?;
    Ok(out)
}

/// A random (version 4) UUID in its text form, as cryptsetup writes it.
fn uuid_v4(random: &[u8]) -> String {
    let mut b = [0u8; 16];
    for (dst, src) in b.iter_mut().zip(random) {
        *dst = *src;
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        h.get(0..8).unwrap_or_default(),
        h.get(8..12).unwrap_or_default(),
        h.get(12..16).unwrap_or_default(),
        h.get(16..20).unwrap_or_default(),
        h.get(20..32).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encfs::luks2::Luks2Header;

    fn passphrase(byte: u8) -> Passphrase {
        Passphrase::from_kbs_resource(Zeroizing::new(vec![byte; 32])).unwrap()
    }

    #[test]
    fn written_header_parses_and_unlocks() {
        let key = new_volume_key().unwrap();
        let (bytes, volume) = header(&key, &passphrase(1)).unwrap();
        let parsed = Luks2Header::parse(&bytes).unwrap();
        assert_eq!(parsed.data_offset(), DATA_OFFSET);
        let unlocked = parsed.unlock(&passphrase(1)).unwrap();
        assert_eq!(unlocked.sector_size(), SECTOR_SIZE);
        let mut sector = vec![0x5a; SECTOR_SIZE as usize];
        volume.encrypt(8192, &mut sector).unwrap();
        unlocked.decrypt(8192, &mut sector).unwrap();
        assert_eq!(sector, vec![0x5a; SECTOR_SIZE as usize]);
        assert_eq!(
            parsed.unlock(&passphrase(2)).unwrap_err(),
            Luks2Error::WrongPassphrase { tried: 1 }
        );
    }

    #[test]
    fn uuid_has_version_and_variant() {
        let u = uuid_v4(&[0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }
}
