//! `--config FILE` (or `AASP_CONFIG`): an optional TOML file whose keys are the long option names,
//! e.g. `listen = ["127.0.0.1:50000"]`, `maa-endpoint = "sharedeus.eus.attest.azure.net"`,
//! `cache-ttl = 300`. Precedence: command-line flag, then environment, then the file, then the
//! default. Each key feeds the option's `AASP_*` variable, so the three sources cannot drift.

use crate::env;
use std::path::Path;

/// Options a configuration file may set, with the variable each feeds.
pub const FILE_KEYS: [(&str, &str); 23] = [
    ("listen", env::AASP_LISTEN),
    ("allow-remote", env::AASP_ALLOW_REMOTE),
    ("rest-listen", env::AASP_REST_LISTEN),
    ("metrics-listen", env::AASP_METRICS_LISTEN),
    ("maa-endpoint", env::AASP_MAA_ENDPOINT),
    ("keys-dir", env::AASP_KEYS_DIR),
    ("imds-endpoint", env::AASP_IMDS_ENDPOINT),
    ("client-id", env::AASP_CLIENT_ID),
    ("access-token-file", env::AASP_ACCESS_TOKEN_FILE),
    ("cache-ttl", env::AASP_CACHE_TTL),
    ("transfer-key-rotation", env::AASP_TRANSFER_KEY_ROTATION),
    ("decrypt-threads", env::AASP_DECRYPT_THREADS),
    ("attester", env::AASP_ATTESTER),
    ("state-dir", env::AASP_STATE_DIR),
    ("cert-source", env::AASP_CERT_SOURCE),
    ("cert-endpoint", env::AASP_CERT_ENDPOINT),
    ("extra-ca", env::AASP_EXTRA_CA),
    ("trust-root", env::AASP_TRUST_ROOT),
    ("log-format", env::AASP_LOG_FORMAT),
    ("allow-kms-host", env::AASP_ALLOW_KMS_HOST),
    ("allow-maa-host", env::AASP_ALLOW_MAA_HOST),
    ("shutdown-grace", env::AASP_SHUTDOWN_GRACE),
    ("provider-name", env::AASP_PROVIDER_NAME),
];

/// The file named by `--config FILE`/`--config=FILE` in `args`, else by `AASP_CONFIG`.
pub fn config_path(args: &[String]) -> Option<String> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--config" {
            return iter.next().cloned();
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(path.to_owned());
        }
    }
    std::env::var(env::AASP_CONFIG).ok()
}

/// The variables the file sets, for those not already set in the environment.
pub fn variables(path: &Path) -> Result<Vec<(&'static str, String)>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let var = FILE_KEYS
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, var)| *var)
            .ok_or_else(|| format!("--config {}: unknown option {key:?}", path.display()))?;
        if std::env::var_os(var).is_some() {
            continue;
        }
        out.push((var, scalar_text(&key, &value)?));
    }
    Ok(out)
}

fn scalar_text(key: &str, value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| scalar_text(key, v))
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.join(",")),
        other => Err(format!(
            "option {key:?}: unsupported value of type {}",
            other.type_str()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keys_to_variables_and_rejects_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aasp.toml");
        std::fs::write(&path, "listen = [\"127.0.0.1:1\", \"unix:///tmp/a.sock\"]\ncache-ttl = 5\nallow-remote = false\n").unwrap();
        let vars = variables(&path).unwrap();
        assert!(vars.contains(&(env::AASP_LISTEN, "127.0.0.1:1,unix:///tmp/a.sock".into())));
        assert!(vars.contains(&(env::AASP_CACHE_TTL, "5".into())));
        std::fs::write(&path, "listn = \"x\"\n").unwrap();
        assert!(variables(&path)
            .unwrap_err()
            .contains("unknown option \"listn\""));
        assert_eq!(
            config_path(&["aasp".into(), "--config=/x.toml".into()]).as_deref(),
            Some("/x.toml")
        );
    }
}
