//! Key Vault release policies: a typed model, an evaluator over token claims, and a generator.
//!
//! `{"version":"1.0.0","anyOf":[{"authority":"https://<maa>","allOf":[{"claim","equals"},…]}]}`;
//! groups nest (`anyOf`/`allOf` inside each other), and values compare as strings.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasePolicy {
    pub version: String,
    #[serde(rename = "anyOf")]
    pub any_of: Vec<AuthorityRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityRule {
    pub authority: String,
    #[serde(flatten)]
    pub group: Group,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Group {
    #[serde(rename = "allOf")]
    AllOf(Vec<Condition>),
    #[serde(rename = "anyOf")]
    AnyOf(Vec<Condition>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Condition {
    Claim { claim: String, equals: Value },
    Nested(Group),
}

/// The claims every generated policy requires besides host_data: an SNP VM, not debuggable.
pub const ATTESTATION_TYPE_CLAIM: &str = "x-ms-attestation-type";
pub const HOSTDATA_CLAIM: &str = "x-ms-sevsnpvm-hostdata";
pub const DEBUGGABLE_CLAIM: &str = "x-ms-sevsnpvm-is-debuggable";

impl ReleasePolicy {
    /// A policy that releases to tokens from `authority` whose workload runs under the security
    /// policy with digest `hostdata`, on a non-debuggable SNP VM, plus any extra `(claim, value)`.
    pub fn for_hostdata(authority: &str, hostdata_hex: &str, extra: &[(String, String)]) -> Self {
        let mut all = vec![
            claim(ATTESTATION_TYPE_CLAIM, "sevsnpvm"),
            claim(HOSTDATA_CLAIM, &hostdata_hex.to_ascii_lowercase()),
            Condition::Claim {
                claim: DEBUGGABLE_CLAIM.into(),
                equals: Value::Bool(false),
            },
        ];
        all.extend(extra.iter().map(|(k, v)| claim(k, v)));
        ReleasePolicy {
            version: "1.0.0".into(),
            any_of: vec![AuthorityRule {
                authority: normalize_authority(authority),
                group: Group::AllOf(all),
            }],
        }
    }

    pub fn parse(json: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(json).map_err(|e| format!("not a release policy: {e}"))
    }

    /// Whether a token issued by `issuer` with `claims` satisfies the policy; the error says
    /// which condition failed.
    pub fn evaluate(&self, issuer: &str, claims: &Value) -> Result<(), String> {
        let issuer = normalize_authority(issuer);
        let rules: Vec<&AuthorityRule> = self
            .any_of
            .iter()
            .filter(|r| normalize_authority(&r.authority) == issuer)
            .collect();
        if rules.is_empty() {
            let known: Vec<&str> = self.any_of.iter().map(|r| r.authority.as_str()).collect();
            return Err(format!(
                "the token's authority {issuer} is not one the policy names ({known:?})"
            ));
        }
        let mut reasons = Vec::new();
        for rule in rules {
            match eval_group(&rule.group, claims) {
                Ok(()) => return Ok(()),
                Err(reason) => reasons.push(reason),
            }
        }
        Err(reasons.join("; "))
    }
}

fn claim(name: &str, value: &str) -> Condition {
    Condition::Claim {
        claim: name.into(),
        equals: Value::String(value.into()),
    }
}

fn eval_group(group: &Group, claims: &Value) -> Result<(), String> {
    match group {
        Group::AllOf(conditions) => conditions
            .iter()
            .try_for_each(|c| eval_condition(c, claims)),
        Group::AnyOf(conditions) => {
            let mut reasons = Vec::new();
            for c in conditions {
                match eval_condition(c, claims) {
                    Ok(()) => return Ok(()),
                    Err(r) => reasons.push(r),
                }
            }
            Err(format!("none of: {}", reasons.join(" | ")))
        }
    }
}

fn eval_condition(condition: &Condition, claims: &Value) -> Result<(), String> {
    match condition {
        Condition::Nested(group) => eval_group(group, claims),
        Condition::Claim { claim, equals } => {
            let expected = as_text(equals);
            match lookup(claims, claim) {
                None => Err(format!(
                    "claim {claim} is missing (policy wants {expected:?})"
                )),
                Some(actual) if as_text(actual) == expected => Ok(()),
                Some(actual) => Err(format!(
                    "claim {claim} is {:?}, the policy wants {expected:?}",
                    as_text(actual)
                )),
            }
        }
    }
}

/// A claim by name, or by dotted path into nested objects (`x-ms-runtime.keys`).
fn lookup<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    claims
        .get(path)
        .or_else(|| path.split('.').try_fold(claims, |v, part| v.get(part)))
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `https://host/` and `host` name the same authority.
pub fn normalize_authority(authority: &str) -> String {
    let trimmed = authority.trim().trim_end_matches('/');
    if trimmed.starts_with("https://") || trimmed.starts_with("http://") {
        trimmed.to_ascii_lowercase()
    } else {
        format!("https://{}", trimmed.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn generated_policy_round_trips_and_evaluates() {
        let policy = ReleasePolicy::for_hostdata(
            "maa.example",
            "ABCD",
            &[("x-ms-sevsnpvm-vmpl".into(), "0".into())],
        );
        let text = serde_json::to_string(&policy).unwrap();
        assert!(
            text.contains(r#""anyOf":[{"authority":"https://maa.example","allOf":["#),
            "{text}"
        );
        assert_eq!(ReleasePolicy::parse(text.as_bytes()).unwrap(), policy);
        let good = json!({"x-ms-attestation-type":"sevsnpvm","x-ms-sevsnpvm-hostdata":"abcd","x-ms-sevsnpvm-is-debuggable":false,"x-ms-sevsnpvm-vmpl":0});
        assert_eq!(policy.evaluate("https://maa.example/", &good), Ok(()));
        let mut debug = good.clone();
        debug["x-ms-sevsnpvm-is-debuggable"] = json!(true);
        let err = policy.evaluate("https://maa.example", &debug).unwrap_err();
        assert!(
            err.contains("x-ms-sevsnpvm-is-debuggable is \"true\""),
            "{err}"
        );
        let err = policy.evaluate("https://other.example", &good).unwrap_err();
        assert!(err.contains("authority"), "{err}");
    }

    #[test]
    fn nested_groups() {
        let policy = ReleasePolicy::parse(
            br#"{"version":"1.0.0","anyOf":[{"authority":"https://a","anyOf":[
                {"claim":"x","equals":"1"},
                {"allOf":[{"claim":"y","equals":"2"},{"claim":"r.k","equals":"v"}]}]}]}"#,
        )
        .unwrap();
        assert!(policy.evaluate("https://a", &json!({"x":"1"})).is_ok());
        assert!(policy
            .evaluate("https://a", &json!({"y":"2","r":{"k":"v"}}))
            .is_ok());
        let err = policy.evaluate("https://a", &json!({"y":"2"})).unwrap_err();
        assert!(err.contains("claim r.k is missing"), "{err}");
    }
}
