#![no_main]
//! The LUKS2 header parser (encfs images come from untrusted storage): never panics; whatever
//! parses re-parses from its validated copy to the same layout, and an unlock attempt on it
//! returns an error or a volume, never a panic.
//!
//! The first input byte says whether both binary headers' checksums are recomputed before
//! parsing (odd: yes). Without that, nearly every mutation of the JSON area stops at the
//! checksum check and the checks behind it (ciphers, KDFs, digests, areas) go unexplored.
//! Seeds: a header prefixed with 0x01 (docs/development.md).
use aasp::encfs::luks2::Luks2Header;
use aasp::encfs::passphrase::Passphrase;
use libfuzzer_sys::fuzz_target;
use sha2::Digest;

/// Binary header: `hdr_size` (big-endian u64) at 8, the 64-byte checksum field at 448; the
/// checksum is SHA-256 over the whole `hdr_size` bytes with that field zeroed.
const HDR_SIZE_AT: usize = 8;
const CHECKSUM_AT: usize = 448;
const CHECKSUM_FIELD: usize = 64;

fn fix_checksum(bytes: &mut [u8], base: usize, hdr_size: usize) {
    let Some(header) = bytes.get_mut(base..base + hdr_size) else {
        return;
    };
    header[CHECKSUM_AT..CHECKSUM_AT + CHECKSUM_FIELD].fill(0);
    let sum = sha2::Sha256::digest(&*header);
    header[CHECKSUM_AT..CHECKSUM_AT + sum.len()].copy_from_slice(&sum);
}

fn fix_checksums(bytes: &mut [u8]) {
    let Some(size) = bytes.get(HDR_SIZE_AT..HDR_SIZE_AT + 8) else {
        return;
    };
    let hdr_size = u64::from_be_bytes(size.try_into().unwrap());
    // LUKS2's header sizes: 16 KiB to 4 MiB.
    if !(16384..=4 << 20).contains(&hdr_size) {
        return;
    }
    let hdr_size = hdr_size as usize;
    fix_checksum(bytes, 0, hdr_size);
    fix_checksum(bytes, hdr_size, hdr_size);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 {
        fix_checksums(&mut bytes);
    }
    if let Ok(header) = Luks2Header::parse(&bytes) {
        let copy = header.to_bytes();
        let again = Luks2Header::parse(&copy).expect("the validated copy parses");
        assert_eq!(again.data_offset(), header.data_offset());
        assert_eq!(again.header_size(), header.header_size());
        let passphrase =
            Passphrase::from_kbs_resource(zeroize::Zeroizing::new(b"fuzz".to_vec())).unwrap();
        let _ = header.unlock(&passphrase);
    }
});
