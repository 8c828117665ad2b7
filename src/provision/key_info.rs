//! Key references of WrapKey and `aasp wrap`: a key-info name in the keys directory, the SKR
//! sidecar's `skr:<key_path>`, or `https://<kms>/keys/<name>?maa=<maa>`; and the cache that keeps
//! WrapKey from reading and parsing the same files on every call.
//!
//! A key-info file (`<name>-info.json`) names where the key lives and, for RSA keys, a PEM public
//! key to wrap to offline. [`KeyInfos`] keeps each resolved file with its public key parsed and
//! looks at the files again (one `stat` each) at most every [`RECHECK`]: a file that changed
//! (size, mtime, inode) is read again, so an edit takes effect within a second.
//! A file modified in the last [`SETTLE`] is not kept: the kernel's file times are coarse (a few
//! milliseconds), so a second write within one tick could otherwise go unseen.

use crate::provision::{invalid, Error, KeyRef, Result};
use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// `<keys-dir>/<name>-info.json`: where a key lives and, for RSA keys, its public key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyInfo {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_key_path: String,
    /// Optional, as the SKR sidecar's key-info files may omit it; a key reference then needs
    /// the configured default (MAA) or fails naming the field (KMS).
    #[serde(default)]
    pub kms_endpoint: String,
    #[serde(default)]
    pub attester_endpoint: String,
}

/// An RSA public key, parsed and checked once, ready for RSA-OAEP-SHA256.
#[derive(Clone)]
pub struct WrappingKey {
    oaep: Arc<OaepPublicEncryptingKey>,
}

impl WrappingKey {
    pub fn from_spki(spki: &[u8]) -> Result<Self> {
        let public = PublicEncryptingKey::from_der(spki)
            .map_err(|_| invalid("the public key is not an RSA key"))?;
        let oaep = OaepPublicEncryptingKey::new(public)
            .map_err(|_| invalid("the RSA key is not usable for OAEP"))?;
        Ok(WrappingKey {
            oaep: Arc::new(oaep),
        })
    }

    pub fn oaep(&self) -> &OaepPublicEncryptingKey {
        &self.oaep
    }
}

impl std::fmt::Debug for WrappingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WrappingKey(RSA-{})", self.oaep.key_size_bits())
    }
}

/// A key reference resolved to where it lives and how to wrap to it.
#[derive(Debug, Clone)]
pub struct ResolvedKey {
    pub key: KeyRef,
    /// The RSA public key, when known without a release.
    pub public: Option<WrappingKey>,
}

/// Where a key reference points.
enum Location<'a> {
    Url(&'a str),
    /// `<dir>/<name>-info.json`.
    Info {
        dir: &'a Path,
        name: &'a str,
    },
}

fn locate<'a>(key_ref: &'a str, keys_dir: Option<&'a Path>) -> Result<Location<'a>> {
    if key_ref.contains("://") {
        return Ok(Location::Url(key_ref));
    }
    if key_ref.starts_with('/') {
        return locate_path(key_ref);
    }
    if key_ref.is_empty() || key_ref.contains('/') || key_ref.contains("..") {
        return Err(invalid(format!(
            "key name {key_ref:?} is neither a plain name nor an absolute key path"
        )));
    }
    let dir = keys_dir.ok_or_else(|| {
        invalid(format!(
            "key {key_ref:?}: no keys directory is configured (--keys-dir)"
        ))
    })?;
    Ok(Location::Info { dir, name: key_ref })
}

/// The SKR sidecar's form, `skr:<key_path>`: the key-info file is `<key_path>-info.json` and the
/// key's name is the path's last component. Absolute paths without `..` only, so a reference
/// never depends on the server's working directory.
fn locate_path(key_path: &str) -> Result<Location<'_>> {
    use std::path::Component;
    let path = Path::new(key_path);
    let plain = path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    let (Some(dir), Some(name), true) = (path.parent(), path.file_name(), plain) else {
        return Err(invalid(format!(
            "key path {key_path:?} is not an absolute path to <dir>/<key name>"
        )));
    };
    let name = name
        .to_str()
        .ok_or_else(|| invalid(format!("key path {key_path:?} is not UTF-8")))?;
    Ok(Location::Info { dir, name })
}

/// Resolves `key-ref`: a key-info name in `keys_dir`, `skr:`'s absolute key path, or
/// `https://<kms>/keys/<name>?maa=<maa>`; reads the files every time (see [`KeyInfos`]).
pub fn resolve(
    key_ref: &str,
    keys_dir: Option<&Path>,
    default_maa: Option<&str>,
) -> Result<ResolvedKey> {
    match locate(key_ref, keys_dir)? {
        Location::Url(url) => from_url(url, default_maa),
        Location::Info { dir, name } => Ok(from_info(dir, name, default_maa)?.0),
    }
}

/// `https://<kms>/keys/<name>[/<version>]?maa=<maa>`: the query names the MAA only.
fn from_url(key_ref: &str, default_maa: Option<&str>) -> Result<ResolvedKey> {
    let url = url::Url::parse(key_ref).map_err(|e| {
        invalid(format!(
            "key reference {}: {e}",
            crate::http::quoted(key_ref)
        ))
    })?;
    let mut maa = None;
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "maa" if maa.is_none() => maa = Some(v.into_owned()),
            _ => {
                return Err(invalid(format!(
                    "key reference {}: the only parameter is one maa=<host>",
                    crate::http::quoted(key_ref)
                )))
            }
        }
    }
    let mut without_query = url;
    without_query.set_query(None);
    // The key URL first: an http:// or malformed one is what to report, not a missing MAA.
    let key = crate::azure::kms::KeyUrl::parse(without_query.as_str())
        .map_err(|e| invalid(e.to_string()))?;
    let maa = maa
        .or_else(|| default_maa.map(str::to_owned))
        .ok_or_else(|| Error::NoMaa {
            subject: format!(
                "key reference {} names no MAA (?maa=<host>)",
                crate::http::quoted(key_ref)
            ),
        })?;
    Ok(ResolvedKey {
        key: KeyRef::from_key_url(key, &maa)?,
        public: None,
    })
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(path: &Path) -> std::io::Result<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// The files a resolution read, each with the stamp it had just before it was read.
type Read = Vec<(PathBuf, Stamp)>;

/// Reads `<dir>/<name>-info.json`; its public key path is relative to `dir` (absolute stays).
fn from_info(dir: &Path, name: &str, default_maa: Option<&str>) -> Result<(ResolvedKey, Read)> {
    let info_path = dir.join(format!("{name}-info.json"));
    let (bytes, info_stamp) = read_stamped(&info_path, "key info")?;
    let info: KeyInfo = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("key info {}: {e}", info_path.display())))?;
    let mut read = vec![(info_path.clone(), info_stamp)];
    let public = if info.public_key_path.is_empty() {
        None
    } else {
        // Relative to the info file, never to the server's working directory.
        let path: PathBuf = dir.join(&info.public_key_path);
        let (pem, stamp) = read_stamped(&path, "public key")?;
        let spki = std::str::from_utf8(&pem)
            .ok()
            .and_then(spki_from_pem)
            .ok_or_else(|| {
                invalid(format!(
                    "public key {} is not a PEM public key",
                    path.display()
                ))
            })?;
        let key = WrappingKey::from_spki(&spki)
            .map_err(|e| invalid(format!("public key {}: {e}", path.display())))?;
        read.push((path, stamp));
        Some(key)
    };
    if info.kms_endpoint.trim().is_empty() {
        return Err(invalid(format!(
            "key info {} names no kms_endpoint: the KMS that holds {name:?} is needed to unwrap",
            info_path.display()
        )));
    }
    // The KMS first: an http:// or malformed kms_endpoint is what to report, not a missing MAA.
    crate::azure::kms::KeyUrl::new(&info.kms_endpoint, name)
        .map_err(|e| invalid(format!("key info {}: {e}", info_path.display())))?;
    let maa = Some(info.attester_endpoint)
        .filter(|m| !m.trim().is_empty())
        .or_else(|| default_maa.map(str::to_owned))
        .ok_or_else(|| Error::NoMaa {
            subject: format!(
                "key info {} names no attester_endpoint",
                info_path.display()
            ),
        })?;
    // Key-info files are the operator's, but they can name any host: their endpoints are
    // parsed and allow-list checked like a request's (by the provisioner, before use).
    let key = KeyRef::azure(&info.kms_endpoint, name, &maa)
        .map_err(|e| invalid(format!("key info {}: {e}", info_path.display())))?;
    Ok((ResolvedKey { key, public }, read))
}

/// The file's bytes and its stamp taken just before reading: a change after the stamp shows as
/// a different stamp next time, so the cache never keeps content newer than its stamp says.
fn read_stamped(path: &Path, what: &str) -> Result<(Vec<u8>, Stamp)> {
    let fail = |e: std::io::Error| invalid(format!("{what} {}: {e}", path.display()));
    let stamp = Stamp::of(path).map_err(fail)?;
    let bytes = std::fs::read(path).map_err(fail)?;
    Ok((bytes, stamp))
}

fn spki_from_pem(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    if !pem.contains("BEGIN PUBLIC KEY") {
        return None;
    }
    STANDARD.decode(body.trim()).ok()
}

/// PEM of a SubjectPublicKeyInfo, as key-info files hold it.
pub fn spki_to_pem(spki: &[u8]) -> String {
    crate::snp::cert::pem_block("PUBLIC KEY", spki)
}

/// How often a kept resolution's files are looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// How long a file must have been left alone before its content is kept.
const SETTLE: Duration = Duration::from_secs(2);

/// Key-info files at most kept at once: a server wraps to a handful of keys; `skr:` paths come
/// from requests and must not grow the cache without bound.
const MAX_CACHED: usize = 64;

/// Resolved key-info files of one server configuration, kept while their files are unchanged.
#[derive(Debug)]
pub struct KeyInfos {
    keys_dir: Option<PathBuf>,
    default_maa: Option<String>,
    cached: Mutex<HashMap<PathBuf, Cached>>,
    recheck: Duration,
    /// Orders uses, for evicting the least recently used entry.
    clock: AtomicU64,
}

#[derive(Debug)]
struct Cached {
    read: Read,
    /// When the files were last seen unchanged.
    checked: Instant,
    resolved: Arc<ResolvedKey>,
    last_used: u64,
}

impl KeyInfos {
    pub fn new(keys_dir: Option<PathBuf>, default_maa: Option<String>) -> Self {
        KeyInfos {
            keys_dir,
            default_maa,
            cached: Mutex::new(HashMap::new()),
            recheck: RECHECK,
            clock: AtomicU64::new(0),
        }
    }

    /// [`resolve`], from the cache while the files it read are unchanged. Failures are not kept.
    pub fn resolve(&self, key_ref: &str) -> Result<Arc<ResolvedKey>> {
        let default_maa = self.default_maa.as_deref();
        let (dir, name) = match locate(key_ref, self.keys_dir.as_deref())? {
            Location::Url(url) => return from_url(url, default_maa).map(Arc::new),
            Location::Info { dir, name } => (dir, name),
        };
        let info_path = dir.join(format!("{name}-info.json"));
        if let Some(hit) = self.fresh(&info_path) {
            return Ok(hit);
        }
        let (resolved, read) = from_info(dir, name, default_maa)?;
        let resolved = Arc::new(resolved);
        self.keep(info_path, read, Arc::clone(&resolved));
        Ok(resolved)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Cached>> {
        self.cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached resolution, if every file it read still has its stamp (looked at again at
    /// most every [`RECHECK`]). The stamps are taken outside the lock: a `stat` may block on a
    /// slow filesystem.
    fn fresh(&self, info_path: &Path) -> Option<Arc<ResolvedKey>> {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let read = {
            let mut cached = self.lock();
            let entry = cached.get_mut(info_path)?;
            if entry.checked.elapsed() < self.recheck {
                entry.last_used = tick;
                return Some(Arc::clone(&entry.resolved));
            }
            entry.read.clone()
        };
        let unchanged = read
            .iter()
            .all(|(path, stamp)| Stamp::of(path).ok().as_ref() == Some(stamp));
        let mut cached = self.lock();
        let entry = cached.get_mut(info_path)?;
        if !unchanged || entry.read != read {
            return None;
        }
        entry.checked = Instant::now();
        entry.last_used = tick;
        Some(Arc::clone(&entry.resolved))
    }

    fn keep(&self, info_path: PathBuf, read: Read, resolved: Arc<ResolvedKey>) {
        let settled = SystemTime::now().checked_sub(SETTLE);
        let unsettled = read
            .iter()
            .any(|(_, stamp)| stamp.modified.is_none() || stamp.modified > settled);
        if unsettled {
            return;
        }
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut cached = self.lock();
        if cached.len() >= MAX_CACHED && !cached.contains_key(&info_path) {
            let oldest = cached
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(path, _)| path.clone());
            if let Some(oldest) = oldest {
                cached.remove(&oldest);
            }
        }
        cached.insert(
            info_path,
            Cached {
                read,
                checked: Instant::now(),
                resolved,
                last_used: tick,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair as _;

    fn spki() -> Vec<u8> {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        pair.public_key().as_der().unwrap().as_ref().to_vec()
    }

    /// Writes a file in place (same inode) with its modification time `age_s` seconds ago.
    fn write_aged(path: &Path, content: &[u8], age_s: u64) {
        std::fs::write(path, content).unwrap();
        let when = SystemTime::now() - Duration::from_secs(age_s);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    fn write_key(dir: &Path, name: &str, kms: &str, spki: &[u8], age_s: u64) {
        let pem = spki_to_pem(spki);
        write_aged(&dir.join(format!("{name}.pub.pem")), pem.as_bytes(), age_s);
        let info = KeyInfo {
            public_key_path: format!("{name}.pub.pem"),
            kms_endpoint: kms.into(),
            attester_endpoint: "maa.example".into(),
        };
        let info = serde_json::to_vec(&info).unwrap();
        write_aged(&dir.join(format!("{name}-info.json")), &info, age_s);
    }

    #[test]
    fn resolved_files_are_kept_until_they_change() {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), "k", "kms-one.example", &spki(), 100);
        let infos = KeyInfos {
            recheck: Duration::ZERO,
            ..KeyInfos::new(Some(dir.path().to_path_buf()), None)
        };
        let first = infos.resolve("k").unwrap();
        let again = infos.resolve("k").unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "an unchanged file is not re-read"
        );
        assert_eq!(first.key.kms().authority(), "kms-one.example");

        // Rewritten in place: read again.
        write_key(dir.path(), "k", "kms-two.example", &spki(), 90);
        let changed = infos.resolve("k").unwrap();
        assert!(!Arc::ptr_eq(&first, &changed));
        assert_eq!(changed.key.kms().authority(), "kms-two.example");

        // A new public key under the same info file is seen too.
        let pem = spki_to_pem(&spki());
        write_aged(&dir.path().join("k.pub.pem"), pem.as_bytes(), 80);
        let rekeyed = infos.resolve("k").unwrap();
        assert!(!Arc::ptr_eq(&changed, &rekeyed));
        assert!(Arc::ptr_eq(&rekeyed, &infos.resolve("k").unwrap()));

        // Just written: used, but not kept, so a second write in the same clock tick is seen.
        write_key(dir.path(), "k", "kms-three.example", &spki(), 0);
        let fresh = infos.resolve("k").unwrap();
        assert_eq!(fresh.key.kms().authority(), "kms-three.example");
        assert!(!Arc::ptr_eq(&fresh, &infos.resolve("k").unwrap()));

        // A file that is gone is an error, never the stale copy.
        std::fs::remove_file(dir.path().join("k-info.json")).unwrap();
        assert!(infos.resolve("k").is_err());
    }

    #[test]
    fn files_are_looked_at_again_only_after_the_recheck_interval() {
        let dir = tempfile::tempdir().unwrap();
        write_key(dir.path(), "k", "kms-one.example", &spki(), 100);
        let infos = KeyInfos {
            recheck: Duration::from_secs(3600),
            ..KeyInfos::new(Some(dir.path().to_path_buf()), None)
        };
        let first = infos.resolve("k").unwrap();
        std::fs::remove_file(dir.path().join("k-info.json")).unwrap();
        assert!(Arc::ptr_eq(&first, &infos.resolve("k").unwrap()));
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_no_failure() {
        let dir = tempfile::tempdir().unwrap();
        let key = spki();
        for i in 0..MAX_CACHED + 10 {
            write_key(dir.path(), &format!("k{i}"), "kms.example", &key, 100);
        }
        let infos = KeyInfos::new(None, None);
        for i in 0..MAX_CACHED + 10 {
            let path = dir.path().join(format!("k{i}"));
            infos.resolve(path.to_str().unwrap()).unwrap();
        }
        assert_eq!(infos.len(), MAX_CACHED);
        assert!(infos
            .resolve(dir.path().join("missing").to_str().unwrap())
            .is_err());
        assert!(infos.resolve("../k1").is_err());
        assert_eq!(infos.len(), MAX_CACHED);
    }

    #[test]
    fn key_references() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("demo-info.json"),
            r#"{"public_key_path":"demo.pem","kms_endpoint":"kms.example","attester_endpoint":"maa.example"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("demo.pem"), spki_to_pem(&spki())).unwrap();
        let r = resolve("demo", Some(dir.path()), None).unwrap();
        assert_eq!(
            (r.key.kms().origin(), r.key.name(), r.key.maa().host()),
            ("https://kms.example".to_owned(), "demo", "maa.example")
        );
        assert_eq!(format!("{:?}", r.public.unwrap()), "WrappingKey(RSA-2048)");
        let r = resolve("https://kms.example/keys/k2?maa=maa2.example", None, None).unwrap();
        assert_eq!((r.key.name(), r.key.maa().host()), ("k2", "maa2.example"));
        for bad in [
            "https://kms.example/keys/k2?maa=a.example&maa=b.example",
            "https://kms.example/keys/k2?maa=a.example&x=1",
            "http://kms.example/keys/k2?maa=a.example",
            "https://x.example:1@kms.example/keys/k2?maa=a.example",
            "https://kms.example/keys/k2?maa=x.example:1@a.example",
        ] {
            assert!(resolve(bad, None, None).is_err(), "{bad}");
        }
        assert!(resolve("../etc/passwd", Some(dir.path()), None).is_err());
        assert!(resolve("missing", Some(dir.path()), None)
            .unwrap_err()
            .to_string()
            .contains("missing-info.json"));
        assert!(resolve("https://kms.example/keys/k2", None, None)
            .unwrap_err()
            .to_string()
            .contains("names no MAA"));
    }

    /// The SKR sidecar's `skr:<key_path>` form (`<key_path>-info.json`, kid = last component)
    /// and its key-info files without endpoints (they fall back to the default MAA).
    #[test]
    fn skr_key_paths_and_optional_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("abs.pem");
        std::fs::write(&pem, spki_to_pem(&spki())).unwrap();
        std::fs::write(
            dir.path().join("mykey-info.json"),
            serde_json::json!({ "public_key_path": pem, "kms_endpoint": "kms.example" })
                .to_string(),
        )
        .unwrap();
        let key_path = dir.path().join("mykey");
        let key_path = key_path.to_str().unwrap();
        let r = resolve(key_path, None, Some("maa.default")).unwrap();
        assert_eq!(
            (r.key.kms().origin(), r.key.name(), r.key.maa().host()),
            ("https://kms.example".to_owned(), "mykey", "maa.default")
        );
        assert!(r.public.is_some());
        assert!(resolve(key_path, None, None)
            .unwrap_err()
            .to_string()
            .contains("names no attester_endpoint"));
        let dotted = format!("{}/../mykey", dir.path().display());
        assert!(resolve(&dotted, None, Some("m")).is_err());
        assert!(resolve("relative/mykey", Some(dir.path()), Some("m")).is_err());
        std::fs::write(dir.path().join("nokms-info.json"), "{}").unwrap();
        let nokms = format!("{}/nokms", dir.path().display());
        assert!(resolve(&nokms, None, Some("m"))
            .unwrap_err()
            .to_string()
            .contains("names no kms_endpoint"));
        // A public key that is not RSA is named when the reference resolves.
        std::fs::write(&pem, spki_to_pem(&[0x30, 0x00])).unwrap();
        let bad = resolve(key_path, None, Some("maa.default"))
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("abs.pem") && bad.contains("not an RSA key"),
            "{bad}"
        );
    }
}
