#![no_main]
//! The LUKS2 header parser (encfs images come from untrusted storage): never panics; whatever
//! parses re-parses from its validated copy to the same layout, and an unlock attempt on it
//! returns an error or a volume, never a panic.
use aasp::encfs::luks2::Luks2Header;
use aasp::encfs::passphrase::Passphrase;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = Luks2Header::parse(data) {
        let copy = header.to_bytes();
        let again = Luks2Header::parse(&copy).expect("the validated copy parses");
        assert_eq!(again.data_offset(), header.data_offset());
        assert_eq!(again.header_size(), header.header_size());
        let passphrase =
            Passphrase::from_kbs_resource(zeroize::Zeroizing::new(b"fuzz".to_vec())).unwrap();
        let _ = header.unlock(&passphrase);
    }
});
