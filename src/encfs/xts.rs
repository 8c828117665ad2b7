//! AES-XTS (IEEE 1619) over whole sectors: the `aes-xts-plain64` of dm-crypt and LUKS2.
//!
//! A sector is one XTS data unit whatever its size (512 to 4096 bytes); its tweak is the
//! `plain64` IV, the sector number as a 64-bit little-endian integer zero-padded to 16 bytes.
//! Which number that is (LUKS2 counts 512-byte units even for 4096-byte sectors) is the
//! caller's business: this module only encrypts one unit under one IV.
//!
//! Sector sizes are multiples of 16, so ciphertext stealing never occurs and is not built. The
//! tweaks of a batch of blocks are computed first and the blocks then go through AES as one
//! slice, so the AES-NI backend keeps eight blocks in flight; the extra XORs are what separates
//! this from a bare AES-ECB pass (BENCHMARKS.md "encfs sector crypto").

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::{Aes128, Aes256, Block};

/// Blocks whose tweaks are prepared before one AES call: a whole 4096-byte sector. The `aes`
/// backends pipeline 64 blocks (VAES-512), 30 (VAES-256) or 8 (AES-NI) per step and take the
/// remainder one block at a time, so a batch shorter than 64 blocks would run every block alone
/// on a VAES-512 machine (BENCHMARKS.md "encfs sector crypto").
const BATCH: usize = 256;

/// An XTS key of a length AES-XTS does not have.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XtsError {
    #[error("an aes-xts key is 32 or 64 bytes (AES-128 or AES-256, twice), not {0}")]
    KeyLength(usize),
    #[error("an XTS data unit is a non-empty multiple of 16 bytes, not {0} bytes")]
    UnitLength(usize),
}

// One per unlocked volume: the size difference costs nothing, a box would cost a pointer chase
// per sector.
#[allow(clippy::large_enum_variant)]
enum Keys {
    Aes128 { data: Aes128, tweak: Aes128 },
    Aes256 { data: Aes256, tweak: Aes256 },
}

/// An AES-XTS key pair (data key, tweak key). The `aes` round keys zeroize on drop.
pub struct Xts {
    keys: Keys,
}

impl std::fmt::Debug for Xts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bits = match self.keys {
            Keys::Aes128 { .. } => 128,
            Keys::Aes256 { .. } => 256,
        };
        write!(f, "Xts(aes-{bits}, <redacted>)")
    }
}

impl Xts {
    /// `key` is the data key followed by the tweak key, as LUKS2 stores an XTS volume key.
    pub fn new(key: &[u8]) -> Result<Self, XtsError> {
        let keys = match key.len() {
            32 => {
                let (data, tweak) = key.split_at(16);
                Keys::Aes128 {
                    data: Aes128::new_from_slice(data).map_err(|_| XtsError::KeyLength(32))?,
                    tweak: Aes128::new_from_slice(tweak).map_err(|_| XtsError::KeyLength(32))?,
                }
            }
            64 => {
                let (data, tweak) = key.split_at(32);
                Keys::Aes256 {
                    data: Aes256::new_from_slice(data).map_err(|_| XtsError::KeyLength(64))?,
                    tweak: Aes256::new_from_slice(tweak).map_err(|_| XtsError::KeyLength(64))?,
                }
            }
            other => return Err(XtsError::KeyLength(other)),
        };
        Ok(Xts { keys })
    }

    /// Encrypts one data unit in place under the `plain64` IV `iv`.
    pub fn encrypt_unit(&self, iv: u64, unit: &mut [u8]) -> Result<(), XtsError> {
        match &self.keys {
            Keys::Aes128 { data, tweak } => crypt(data, tweak, iv, unit, Direction::Encrypt),
            Keys::Aes256 { data, tweak } => crypt(data, tweak, iv, unit, Direction::Encrypt),
        }
    }

    /// Decrypts one data unit in place under the `plain64` IV `iv`.
    pub fn decrypt_unit(&self, iv: u64, unit: &mut [u8]) -> Result<(), XtsError> {
        match &self.keys {
            Keys::Aes128 { data, tweak } => crypt(data, tweak, iv, unit, Direction::Decrypt),
            Keys::Aes256 { data, tweak } => crypt(data, tweak, iv, unit, Direction::Decrypt),
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Encrypt,
    Decrypt,
}

fn crypt<C>(
    data: &C,
    tweak: &C,
    iv: u64,
    unit: &mut [u8],
    direction: Direction,
) -> Result<(), XtsError>
where
    C: BlockCipherEncrypt<BlockSize = aes::cipher::consts::U16> + BlockCipherDecrypt,
{
    let (blocks, rest) = Block::slice_as_chunks_mut(unit);
    if blocks.is_empty() || !rest.is_empty() {
        return Err(XtsError::UnitLength(unit.len()));
    }
    // plain64: the IV's 64 bits little-endian, zero-padded to the block.
    let mut t_block = Block::from(u128::from(iv).to_le_bytes());
    tweak.encrypt_block(&mut t_block);
    let mut t = u128::from_le_bytes(t_block.into());
    for chunk in blocks.chunks_mut(BATCH) {
        // 4 KiB of tweaks on the stack: derived from the IV, not secret like the key.
        let mut tweaks = [0u128; BATCH];
        for (block, slot) in chunk.iter_mut().zip(tweaks.iter_mut()) {
            *slot = t;
            xor_into(block, t);
            t = times_alpha(t);
        }
        match direction {
            Direction::Encrypt => data.encrypt_blocks(chunk),
            Direction::Decrypt => data.decrypt_blocks(chunk),
        }
        for (block, slot) in chunk.iter_mut().zip(tweaks.iter()) {
            xor_into(block, *slot);
        }
    }
    Ok(())
}

fn xor_into(block: &mut Block, t: u128) {
    let value = u128::from_le_bytes((*block).into()) ^ t;
    *block = Block::from(value.to_le_bytes());
}

/// Multiplication by α in GF(2^128) with IEEE 1619's little-endian byte order; branch-free,
/// since the tweak is secret.
fn times_alpha(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed independently with Python's `cryptography` 48 (OpenSSL's AES-XTS),
    // `Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()`, where
    // key = bytes(range(64)) (or range(32)), tweak = (iv).to_bytes(16, "little"),
    // plaintext = bytes(i % 251 for i in range(len)).
    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn key(len: u8) -> Vec<u8> {
        (0..len).collect()
    }

    #[test]
    fn round_trips_and_differs_per_iv() {
        let xts = Xts::new(&key(64)).unwrap();
        let mut a = plaintext(4096);
        let mut b = a.clone();
        xts.encrypt_unit(8, &mut a).unwrap();
        xts.encrypt_unit(16, &mut b).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, plaintext(4096));
        xts.decrypt_unit(8, &mut a).unwrap();
        assert_eq!(a, plaintext(4096));
    }

    #[test]
    fn matches_openssl_aes256_xts() {
        let xts = Xts::new(&key(64)).unwrap();
        let mut unit = plaintext(512);
        xts.encrypt_unit(0x0123_4567_89ab_cdef, &mut unit).unwrap();
        assert_eq!(hex::encode(&unit[..32]), VECTOR_256_512_HEAD);
        assert_eq!(hex::encode(&unit[480..]), VECTOR_256_512_TAIL);
        let mut big = plaintext(4096);
        xts.encrypt_unit(8, &mut big).unwrap();
        assert_eq!(hex::encode(&big[4064..]), VECTOR_256_4096_TAIL);
    }

    #[test]
    fn matches_openssl_aes128_xts() {
        let xts = Xts::new(&key(32)).unwrap();
        let mut unit = plaintext(512);
        xts.encrypt_unit(1, &mut unit).unwrap();
        assert_eq!(hex::encode(&unit[..32]), VECTOR_128_512_HEAD);
    }

    #[test]
    fn refuses_bad_lengths() {
        assert_eq!(Xts::new(&[0; 48]).unwrap_err(), XtsError::KeyLength(48));
        let xts = Xts::new(&key(64)).unwrap();
        assert_eq!(
            xts.encrypt_unit(0, &mut [0; 20]).unwrap_err(),
            XtsError::UnitLength(20)
        );
        assert_eq!(
            xts.decrypt_unit(0, &mut []).unwrap_err(),
            XtsError::UnitLength(0)
        );
    }

    const VECTOR_256_512_HEAD: &str =
        "7b30457ebd9aed8e8a5fea502607c86c1e0fde91fe121f56b9d667473c82494e";
    const VECTOR_256_512_TAIL: &str =
        "91e7e7f73a35a1c911857cf29389ad2ae28fe07078f22495b478493c46b16ae9";
    const VECTOR_256_4096_TAIL: &str =
        "586ba7686a06e8cad0107a16795acdc83096b691c2c79d563a039b96bb76caa2";
    const VECTOR_128_512_HEAD: &str =
        "17913bf4f31362fa9006c28e815e22378625315641e4d199320895768226ff45";
}
