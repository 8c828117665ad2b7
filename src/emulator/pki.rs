//! The emulator's dev CA (persisted, so clients configured to trust it keep working across
//! restarts), its TLS server certificate, and the certificate of the key that signs release
//! responses (chained to the dev CA, valid for the same host names, as Key Vault's is).

use crate::emulator::Error;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::RsaKeyPair;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_RSA_SHA256,
};
use std::path::{Path, PathBuf};

pub const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const HOSTS: [&str; 2] = ["localhost", "127.0.0.1"];

pub struct Pki {
    pub ca_pem: String,
    pub ca_path: PathBuf,
    pub server_chain_der: Vec<Vec<u8>>,
    pub server_key_der: Vec<u8>,
    pub signer: RsaKeyPair,
    /// Standard base64 DER of the signer's certificate, then the CA: the JWS `x5c`.
    pub signer_x5c: Vec<String>,
}

fn ca_params() -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_error)?;
    params
        .distinguished_name
        .push(DnType::CommonName, "aasp emulator dev CA");
    params.distinguished_name.push(
        DnType::OrganizationName,
        "aasp local emulation (not for production)",
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn pki_error(e: impl std::fmt::Display) -> Error {
    Error::Pki(e.to_string())
}

impl Pki {
    /// Loads the dev CA from `dir` (or creates it) and issues fresh leaf certificates for
    /// loopback.
    pub fn load_or_create(dir: &Path) -> Result<Self, Error> {
        Self::load_or_create_naming(dir, &[])
    }

    /// [`Pki::load_or_create`], the leaf certificates also valid for `extra_names`.
    pub fn load_or_create_naming(dir: &Path, extra_names: &[String]) -> Result<Self, Error> {
        crate::files::create_private_dir(dir).map_err(|e| Error::Io(e.to_string()))?;
        let ca_path = dir.join(CA_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let ca_key = match std::fs::read_to_string(&key_path) {
            Ok(pem) => KeyPair::from_pem(&pem).map_err(pki_error)?,
            Err(_) => {
                let key = KeyPair::generate().map_err(pki_error)?;
                write_private(&key_path, key.serialize_pem().as_bytes())?;
                key
            }
        };
        let params = ca_params()?;
        let ca_pem = match std::fs::read_to_string(&ca_path) {
            Ok(pem) => pem,
            Err(_) => {
                let pem = params.self_signed(&ca_key).map_err(pki_error)?.pem();
                crate::files::write_public(&ca_path, pem.as_bytes())
                    .map_err(|e| Error::Io(e.to_string()))?;
                pem
            }
        };
        let ca_der = crate::snp::cert::Cert::from_pem_bundle(ca_pem.as_bytes())
            .map_err(pki_error)?
            .first()
            .map(|c| c.der().to_vec())
            .ok_or_else(|| Error::Pki("ca.pem holds no certificate".into()))?;
        let issuer = Issuer::new(params, ca_key);

        let server_key = KeyPair::generate().map_err(pki_error)?;
        let server_cert = leaf_params("aasp emulator", extra_names)?
            .signed_by(&server_key, &issuer)
            .map_err(pki_error)?;

        let rsa = RsaKeyPair::generate(KeySize::Rsa2048)
            .map_err(|_| Error::Pki("RSA key generation failed".into()))?;
        let rsa_pkcs8 = rsa
            .as_der()
            .map_err(|_| Error::Pki("cannot encode the signing key".into()))?;
        let signer_key =
            KeyPair::from_pkcs8_der_and_sign_algo(&rsa_pkcs8.as_ref().into(), &PKCS_RSA_SHA256)
                .map_err(pki_error)?;
        let signer_cert = leaf_params("aasp emulator key release signer", extra_names)?
            .signed_by(&signer_key, &issuer)
            .map_err(pki_error)?;
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(Pki {
            ca_pem,
            ca_path,
            server_chain_der: vec![server_cert.der().to_vec(), ca_der.clone()],
            server_key_der: server_key.serialize_der(),
            signer: rsa,
            signer_x5c: vec![b64.encode(signer_cert.der()), b64.encode(&ca_der)],
        })
    }
}

fn leaf_params(cn: &str, extra_names: &[String]) -> Result<CertificateParams, Error> {
    let names = HOSTS
        .iter()
        .map(|h| (*h).to_owned())
        .chain(extra_names.iter().cloned());
    let mut params = CertificateParams::new(names.collect::<Vec<_>>()).map_err(pki_error)?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    crate::files::write_private(path, bytes).map_err(|e| Error::Io(e.to_string()))
}
