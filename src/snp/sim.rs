//! A simulated SNP device that behaves like the hardware from the outside.
//!
//! It owns a key hierarchy built with AMD's algorithms: a self-signed ARK and an ASK (RSA-PSS
//! SHA-384, 2048-bit keys rather than AMD's 4096 to keep start-up fast) and a P-384 VCEK carrying
//! AMD's TCB and HWID extensions for the simulated chip and TCB. Reports are signed by the VCEK
//! exactly as the firmware signs them. Its certificates name the "Milan" product but the
//! organisation "aasp SNP simulator", and they chain to the simulator's ARK only: a verifier
//! accepts them only when told to trust that root.
//!
//! The hierarchy and the device identity persist in `<state-dir>/sim/`, so restarts keep the same
//! identity. Beside them the simulator writes a `security-context/` directory laid out like the
//! one Azure mounts into a confidential container (`host-amd-cert-base64`,
//! `security-policy-base64`), so the production certificate-source code reads the simulator's
//! chain the same way it reads the platform's.

use crate::snp::attester::Attester;
use crate::snp::cert::{self, Cert, RSA_PSS_SHA384_ALGORITHM};
use crate::snp::report::{AttestationReport, FirmwareVersion};
use crate::snp::verify::Chain;
use crate::snp::{Error, Result};
use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair, RsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING, RSA_PSS_SHA384,
};
use base64::Engine;
use der::asn1::{BitString, Ia5StringRef, OctetString, UtcTime};
use der::{Decode, Encode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate};

/// The security policy the simulated workload runs under unless one is given: it allows
/// everything, and says so.
pub const DEFAULT_SECURITY_POLICY: &str = "package policy\n\n\
# aasp simulator development policy: allows everything. Never use outside development.\n\
api_version := \"0.10.0\"\n\
framework_version := \"0.2.3\"\n\
default allow_all := true\n";

/// Guest policy bits 16 (SMT allowed) and 17 (reserved, must be one): a production guest policy.
pub const DEFAULT_POLICY: u64 = 0x3_0000;
/// Boot loader 3, TEE 0, SNP 8, microcode 115: what Azure's Milan hosts report.
pub const DEFAULT_TCB: u64 = 0x7308_0000_0000_0003;

/// SNP firmware 1.55.21, a Milan release.
const FIRMWARE_VERSION: FirmwareVersion = FirmwareVersion {
    build: 21,
    minor: 55,
    major: 1,
    reserved: 0,
};
const ORG: &str = "OU=Engineering,C=US,L=Santa Clara,ST=CA,O=aasp SNP simulator";
const PRODUCT: &str = "Milan";
const TWENTY_YEARS: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
const SEVEN_YEARS: Duration = Duration::from_secs(7 * 365 * 24 * 3600);

/// How to open the simulator. The chip (its id, keys and certificates) persists in the state
/// directory; the guest and platform settings below apply to this run only, and `None` means
/// the default: a flag given once (say, the debug bit) must not silently stay set for later runs
/// that did not ask for it.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    pub state_dir: PathBuf,
    /// Launch measurement, 48 bytes.
    pub measurement: Option<[u8; 48]>,
    /// Guest policy (bit 19 = debuggable).
    pub policy: Option<u64>,
    /// host_data becomes SHA-256 of this security policy's text.
    pub security_policy: Option<String>,
    pub reported_tcb: Option<u64>,
    pub chip_id: Option<[u8; 64]>,
}

/// The simulated chip and guest, as persisted in `device.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Device {
    report_version: u32,
    #[serde(with = "hex::serde")]
    chip_id: [u8; 64],
    reported_tcb: u64,
    #[serde(with = "hex::serde")]
    measurement: [u8; 48],
    policy: u64,
    security_policy: String,
    guest_svn: u32,
}

impl Device {
    fn new_chip() -> Result<Self> {
        let mut chip_id = [0u8; 64];
        SystemRandom::new()
            .fill(&mut chip_id)
            .map_err(|_| rng_error())?;
        Ok(Device::launch(3, chip_id))
    }

    /// A guest launched with the default settings on the chip `chip_id`.
    fn launch(report_version: u32, chip_id: [u8; 64]) -> Self {
        Device {
            report_version,
            chip_id,
            reported_tcb: DEFAULT_TCB,
            measurement: Sha384::digest(b"aasp simulated guest firmware").into(),
            policy: DEFAULT_POLICY,
            security_policy: DEFAULT_SECURITY_POLICY.into(),
            guest_svn: 1,
        }
    }

    fn host_data(&self) -> [u8; 32] {
        Sha256::digest(self.security_policy.as_bytes()).into()
    }
}

/// The simulated device. Signing needs only the VCEK key; the ASK key stays on disk for
/// re-issuing the VCEK when the simulated TCB or chip changes.
pub struct Simulated {
    device: Device,
    vcek_key: EcdsaKeyPair,
    chain: Chain,
    dir: PathBuf,
}

impl Simulated {
    pub fn open(options: &SimOptions) -> Result<Self> {
        let dir = options.state_dir.join("sim");
        let io = |reason: String| Error::Simulator {
            dir: dir.clone(),
            reason,
        };
        crate::files::create_private_dir(&dir).map_err(|e| io(format!("cannot create: {e}")))?;

        // Only the chip's identity is taken from the state directory; device.json records the
        // last run's settings for people to read, never as defaults for the next run.
        let mut device = match std::fs::read(dir.join("device.json")) {
            Ok(bytes) => {
                let stored: Device = serde_json::from_slice(&bytes)
                    .map_err(|e| io(format!("device.json is not valid: {e}")))?;
                Device::launch(stored.report_version, stored.chip_id)
            }
            Err(_) => Device::new_chip()?,
        };
        options.measurement.inspect(|m| device.measurement = *m);
        options.policy.inspect(|p| device.policy = *p);
        options.reported_tcb.inspect(|t| device.reported_tcb = *t);
        options.chip_id.inspect(|c| device.chip_id = *c);
        if let Some(policy) = &options.security_policy {
            device.security_policy.clone_from(policy);
        }

        let (ark, ask, ask_key) = load_or_create_roots(&dir)?;
        let (vcek, vcek_key) = load_or_issue_vcek(&dir, &device, &ask, &ask_key)?;
        let sim = Simulated {
            device,
            vcek_key,
            chain: Chain {
                signer: vcek,
                intermediate: Some(ask),
                ark: Some(ark),
            },
            dir,
        };
        sim.persist()?;
        Ok(sim)
    }

    /// The VCEK, ASK and ARK, as THIM would serve them.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The directory laid out like Azure's security context, holding this device's chain.
    pub fn security_context_dir(&self) -> PathBuf {
        self.dir.join("security-context")
    }

    pub fn host_data(&self) -> [u8; 32] {
        self.device.host_data()
    }

    /// The simulated guest's launch measurement.
    pub fn measurement(&self) -> [u8; 48] {
        self.device.measurement
    }

    /// The THIM document (`host-amd-cert`) for this device.
    pub fn thim_json(&self) -> String {
        let ask_ark: String = [&self.chain.intermediate, &self.chain.ark]
            .into_iter()
            .flatten()
            .map(Cert::to_pem)
            .collect();
        serde_json::json!({
            "vcekCert": self.chain.signer.to_pem(),
            "certificateChain": ask_ark,
            "tcbm": format!("{:016X}", self.device.reported_tcb),
            "cacheControl": "86400",
        })
        .to_string()
    }

    fn persist(&self) -> Result<()> {
        let io = |reason: String| Error::Simulator {
            dir: self.dir.clone(),
            reason,
        };
        let device = serde_json::to_vec_pretty(&self.device).map_err(|e| io(e.to_string()))?;
        write_private(&self.dir.join("device.json"), &device).map_err(io)?;
        let context = self.security_context_dir();
        crate::files::create_private_dir(&context).map_err(|e| io(e.to_string()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        write_private(
            &context.join("host-amd-cert-base64"),
            b64.encode(self.thim_json()).as_bytes(),
        )
        .map_err(io)?;
        write_private(
            &context.join("security-policy-base64"),
            b64.encode(&self.device.security_policy).as_bytes(),
        )
        .map_err(io)
    }

    fn build_report(&self, report_data: &[u8; 64]) -> Result<AttestationReport> {
        let d = &self.device;
        let mut r = AttestationReport::blank(d.report_version);
        r.guest_svn = d.guest_svn;
        r.policy = d.policy;
        r.current_tcb = d.reported_tcb;
        r.reported_tcb = d.reported_tcb;
        r.committed_tcb = d.reported_tcb;
        r.launch_tcb = d.reported_tcb;
        r.platform_info = 0x1; // SMT enabled
        r.current_version = FIRMWARE_VERSION;
        r.committed_version = FIRMWARE_VERSION;
        r.report_data = *report_data;
        r.measurement = d.measurement;
        r.host_data = d.host_data();
        r.chip_id = d.chip_id;
        // Family 0x19 model 0x01 stepping 1: a Milan part.
        r.cpuid = [0x19, 0x01, 0x01];
        SystemRandom::new()
            .fill(&mut r.report_id)
            .map_err(|_| rng_error())?;
        self.sign(&mut r)?;
        Ok(r)
    }

    /// Signs `report` with this device's VCEK, as the firmware signs: a verifier's negative
    /// tests use it to build reports whose fields no real firmware would produce but whose
    /// signature is valid, so that only the check under test can refuse them.
    pub fn sign(&self, report: &mut AttestationReport) -> Result<()> {
        let sig = self
            .vcek_key
            .sign(&SystemRandom::new(), &report.signed_bytes())
            .map_err(|_| self.error("VCEK signing failed"))?;
        let sig: [u8; 96] = sig
            .as_ref()
            .try_into()
            .map_err(|_| self.error("unexpected signature size"))?;
        report.set_signature_p1363(&sig);
        Ok(())
    }

    fn error(&self, reason: &str) -> Error {
        Error::Simulator {
            dir: self.dir.clone(),
            reason: reason.into(),
        }
    }
}

impl Attester for Simulated {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn report(&self, report_data: &[u8; 64]) -> Result<Vec<u8>> {
        Ok(self.build_report(report_data)?.to_bytes())
    }

    fn simulated_root(&self) -> Option<Cert> {
        self.chain.ark.clone()
    }
}

fn load_or_create_roots(dir: &Path) -> Result<(Cert, Cert, RsaKeyPair)> {
    let err = |reason: String| Error::Simulator {
        dir: dir.to_path_buf(),
        reason,
    };
    if let (Ok(ark), Ok(ask), Ok(key)) = (
        std::fs::read(dir.join("ark.der")),
        std::fs::read(dir.join("ask.der")),
        std::fs::read(dir.join("ask.pk8")),
    ) {
        let key = RsaKeyPair::from_pkcs8(&key).map_err(|e| err(format!("ask.pk8: {e}")))?;
        return Ok((Cert::from_der(&ark)?, Cert::from_der(&ask)?, key));
    }
    let ark_key = RsaKeyPair::generate(KeySize::Rsa2048)
        .map_err(|_| err("ARK key generation failed".into()))?;
    let ask_key = RsaKeyPair::generate(KeySize::Rsa2048)
        .map_err(|_| err("ASK key generation failed".into()))?;
    let ark_name = format!("{ORG},CN=ARK-{PRODUCT}");
    let ask_name = format!("{ORG},CN=SEV-{PRODUCT}");
    let ark = issue(
        &ark_name,
        &ark_name,
        &spki_rsa(&ark_key)?,
        &ark_key,
        1,
        TWENTY_YEARS,
        vec![],
    )?;
    let ask = issue(
        &ask_name,
        &ark_name,
        &spki_rsa(&ask_key)?,
        &ark_key,
        2,
        TWENTY_YEARS,
        vec![],
    )?;
    let ask_pk8 = ask_key
        .as_der()
        .map_err(|_| err("cannot encode the ASK key".into()))?;
    write_private(&dir.join("ask.pk8"), ask_pk8.as_ref()).map_err(err)?;
    write_private(&dir.join("ark.der"), ark.der()).map_err(err)?;
    // The root is public; PEM is what `--trust-root` takes.
    crate::files::write_public(&dir.join("ark.pem"), ark.to_pem().as_bytes())
        .map_err(|e| err(e.to_string()))?;
    write_private(&dir.join("ask.der"), ask.der()).map_err(err)?;
    Ok((ark, ask, ask_key))
}

/// Reuses the stored VCEK while it certifies the device's chip and TCB; otherwise issues a new
/// one, as AMD's KDS would for a new TCB.
fn load_or_issue_vcek(
    dir: &Path,
    device: &Device,
    ask: &Cert,
    ask_key: &RsaKeyPair,
) -> Result<(Cert, EcdsaKeyPair)> {
    let err = |reason: String| Error::Simulator {
        dir: dir.to_path_buf(),
        reason,
    };
    if let (Ok(cert), Ok(key)) = (
        std::fs::read(dir.join("vcek.der")),
        std::fs::read(dir.join("vcek.pk8")),
    ) {
        let cert = Cert::from_der(&cert)?;
        let ext = cert.sev_extensions()?;
        if ext.hwid == Some(device.chip_id) && ext.tcb_raw(false) == device.reported_tcb {
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &key)
                .map_err(|e| err(format!("vcek.pk8: {e}")))?;
            return Ok((cert, key));
        }
    }
    let key = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING)
        .map_err(|_| err("VCEK key generation failed".into()))?;
    let spki = key
        .public_key()
        .as_der()
        .map_err(|_| err("cannot encode the VCEK public key".into()))?;
    let spki = SubjectPublicKeyInfoOwned::from_der(spki.as_ref()).map_err(cert::CertError::Der)?;
    let vcek = issue(
        &format!("{ORG},CN=SEV-VCEK"),
        &format!("{ORG},CN=SEV-{PRODUCT}"),
        &spki,
        ask_key,
        0,
        SEVEN_YEARS,
        vcek_extensions(device)?,
    )?;
    if !vcek.is_signed_by(ask) {
        return Err(err("the stored ASK key does not match ask.der".into()));
    }
    let pk8 = key
        .to_pkcs8v1()
        .map_err(|_| err("cannot encode the VCEK key".into()))?;
    write_private(&dir.join("vcek.pk8"), pk8.as_ref()).map_err(err)?;
    write_private(&dir.join("vcek.der"), vcek.der()).map_err(err)?;
    Ok((vcek, key))
}

fn vcek_extensions(device: &Device) -> Result<Vec<Extension>> {
    let tcb = device.reported_tcb.to_le_bytes();
    let int = |v: u8| v.to_der();
    let product = Ia5StringRef::new(&format!("{PRODUCT}-B0"))?.to_der()?;
    let mut values: Vec<(der::oid::ObjectIdentifier, Vec<u8>)> = vec![
        (
            der::oid::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.1"),
            int(0)?,
        ),
        (cert::OID_PRODUCT_NAME, product),
    ];
    for (oid, value) in [
        (cert::OID_TCB_BOOTLOADER, tcb[0]),
        (cert::OID_TCB_TEE, tcb[1]),
        (cert::OID_TCB_SNP, tcb[6]),
        (cert::OID_TCB_MICROCODE, tcb[7]),
    ] {
        values.push((oid, int(value)?));
    }
    values.push((cert::OID_HWID, device.chip_id.to_vec()));
    values
        .into_iter()
        .map(|(extn_id, value)| {
            Ok(Extension {
                extn_id,
                critical: false,
                extn_value: OctetString::new(value)?,
            })
        })
        .collect()
}

fn spki_rsa(key: &RsaKeyPair) -> Result<SubjectPublicKeyInfoOwned> {
    let der: PublicKeyX509Der = key.public_key().as_der().map_err(|_| Error::Simulator {
        dir: PathBuf::new(),
        reason: "cannot encode an RSA public key".into(),
    })?;
    Ok(SubjectPublicKeyInfoOwned::from_der(der.as_ref()).map_err(cert::CertError::Der)?)
}

/// Issues a certificate signed with RSA-PSS SHA-384, as AMD's keys sign.
fn issue(
    subject: &str,
    issuer: &str,
    spki: &SubjectPublicKeyInfoOwned,
    signer: &RsaKeyPair,
    serial: u8,
    lifetime: Duration,
    extensions: Vec<Extension>,
) -> Result<Cert> {
    let algorithm = AlgorithmIdentifierOwned::from_der(RSA_PSS_SHA384_ALGORITHM)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let day = Duration::from_secs(24 * 3600);
    let tbs = TbsCertificate {
        version: x509_cert::Version::V3,
        serial_number: SerialNumber::new(&[serial])?,
        signature: algorithm.clone(),
        issuer: Name::from_str(issuer)?,
        validity: Validity {
            not_before: Time::UtcTime(UtcTime::from_unix_duration(now.saturating_sub(day))?),
            not_after: Time::UtcTime(UtcTime::from_unix_duration(now + lifetime)?),
        },
        subject: Name::from_str(subject)?,
        subject_public_key_info: spki.clone(),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: (!extensions.is_empty()).then_some(extensions),
    };
    let tbs_der = tbs.to_der()?;
    let mut signature = vec![0u8; signer.public_modulus_len()];
    signer
        .sign(
            &RSA_PSS_SHA384,
            &SystemRandom::new(),
            &tbs_der,
            &mut signature,
        )
        .map_err(|_| Error::Simulator {
            dir: PathBuf::new(),
            reason: "RSA-PSS signing failed".into(),
        })?;
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(&signature)?,
    };
    Ok(Cert::from_der(&cert.to_der()?)?)
}

fn rng_error() -> Error {
    Error::Simulator {
        dir: PathBuf::new(),
        reason: "the system random number generator failed".into(),
    }
}

/// Writes a file readable only by its owner: the simulator's directory holds private keys.
fn write_private(path: &Path, bytes: &[u8]) -> std::result::Result<(), String> {
    crate::files::write_private(path, bytes).map_err(|e| e.to_string())
}
