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

/// The claims every generated policy requires besides host_data: an SNP VM, not debuggable,
/// running code MAA vouches for (compliance status) or a named launch measurement.
pub const ATTESTATION_TYPE_CLAIM: &str = "x-ms-attestation-type";
pub const HOSTDATA_CLAIM: &str = "x-ms-sevsnpvm-hostdata";
pub const DEBUGGABLE_CLAIM: &str = "x-ms-sevsnpvm-is-debuggable";
pub const COMPLIANCE_CLAIM: &str = "x-ms-compliance-status";
pub const MEASUREMENT_CLAIM: &str = "x-ms-sevsnpvm-launchmeasurement";
/// MAA's verdict for a UVM image Microsoft signed for Azure Container Instances.
pub const COMPLIANT_UVM: &str = "azure-compliant-uvm";
/// MAA's verdict for a UVM image Microsoft signed for Kata confidential containers on AKS.
pub const SIGNED_KATACC_UVM: &str = "azure-signed-katacc-uvm";
/// MAA's verdict for any other launch measurement.
pub const NON_COMPLIANT: &str = "azure-non-compliant";

/// What a generated policy requires of the guest's launched code (the UVM). HOST_DATA alone is
/// not enough: the host chooses it at launch, so any guest image could carry the right value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UvmRequirement {
    /// `x-ms-compliance-status` = `azure-compliant-uvm` (Microsoft's SKR samples).
    #[default]
    CompliantUvm,
    /// `x-ms-compliance-status` = `azure-signed-katacc-uvm` (AKS Kata confidential containers).
    SignedKataccUvm,
    /// `x-ms-sevsnpvm-launchmeasurement` = this measurement (96 lower-case hex digits), for a UVM
    /// MAA does not know.
    LaunchMeasurement(String),
}

impl UvmRequirement {
    fn condition(&self) -> Condition {
        match self {
            UvmRequirement::CompliantUvm => claim(COMPLIANCE_CLAIM, COMPLIANT_UVM),
            UvmRequirement::SignedKataccUvm => claim(COMPLIANCE_CLAIM, SIGNED_KATACC_UVM),
            UvmRequirement::LaunchMeasurement(hex) => {
                claim(MEASUREMENT_CLAIM, &hex.to_ascii_lowercase())
            }
        }
    }
}

impl ReleasePolicy {
    /// A policy that releases to tokens from `authority` whose workload runs under the security
    /// policy with digest `hostdata`, in a compliant UVM (`azure-compliant-uvm`), on a
    /// non-debuggable SNP VM, plus any extra `(claim, value)`.
    pub fn for_hostdata(authority: &str, hostdata_hex: &str, extra: &[(String, String)]) -> Self {
        Self::for_workload(authority, hostdata_hex, &UvmRequirement::default(), extra)
    }

    /// As [`ReleasePolicy::for_hostdata`], with the UVM requirement chosen by the caller.
    pub fn for_workload(
        authority: &str,
        hostdata_hex: &str,
        uvm: &UvmRequirement,
        extra: &[(String, String)],
    ) -> Self {
        let mut all = vec![
            claim(ATTESTATION_TYPE_CLAIM, "sevsnpvm"),
            uvm.condition(),
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

    /// Refuses a policy with an empty `anyOf`/`allOf` anywhere: an empty `allOf` is vacuously
    /// true (it would release to any token from the authority), an empty `anyOf` can never be
    /// met; either is a mistake, and Key Vault's grammar requires at least one member.
    pub fn validate(&self) -> Result<(), String> {
        if self.any_of.is_empty() {
            return Err("the policy's top-level anyOf is empty: no authority may release".into());
        }
        for rule in &self.any_of {
            validate_group(&rule.group)
                .map_err(|e| format!("authority {}: {e}", rule.authority))?;
        }
        Ok(())
    }

    /// Why this policy would release the key to any UVM from some authority: the rules that
    /// require neither a compliance status nor a launch measurement on every path. Empty when
    /// every authority's rule pins the launched code.
    pub fn any_uvm_warnings(&self) -> Vec<String> {
        self.any_of
            .iter()
            .filter(|rule| !group_pins_uvm(&rule.group))
            .map(|rule| {
                format!(
                    "the rule for authority {} releases to any UVM: it requires neither {COMPLIANCE_CLAIM} \
                     ({COMPLIANT_UVM} or {SIGNED_KATACC_UVM}) nor {MEASUREMENT_CLAIM}, so a guest running any \
                     code with the right host_data (chosen by the host) gets the key",
                    rule.authority
                )
            })
            .collect()
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

fn validate_group(group: &Group) -> Result<(), String> {
    let (name, conditions) = match group {
        Group::AllOf(c) => ("allOf", c),
        Group::AnyOf(c) => ("anyOf", c),
    };
    if conditions.is_empty() {
        return Err(format!("an empty {name} is not a valid condition"));
    }
    conditions.iter().try_for_each(|c| match c {
        Condition::Nested(group) => validate_group(group),
        Condition::Claim { .. } => Ok(()),
    })
}

/// Whether every way to satisfy `group` requires a good compliance status or a launch
/// measurement.
fn group_pins_uvm(group: &Group) -> bool {
    match group {
        Group::AllOf(conditions) => conditions.iter().any(condition_pins_uvm),
        Group::AnyOf(conditions) => {
            !conditions.is_empty() && conditions.iter().all(condition_pins_uvm)
        }
    }
}

fn condition_pins_uvm(condition: &Condition) -> bool {
    match condition {
        Condition::Nested(group) => group_pins_uvm(group),
        Condition::Claim { claim, equals } => match claim.as_str() {
            COMPLIANCE_CLAIM => {
                let status = as_text(equals);
                status == COMPLIANT_UVM || status == SIGNED_KATACC_UVM
            }
            MEASUREMENT_CLAIM => !as_text(equals).is_empty(),
            _ => false,
        },
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
        let good = json!({"x-ms-attestation-type":"sevsnpvm","x-ms-compliance-status":"azure-compliant-uvm","x-ms-sevsnpvm-hostdata":"abcd","x-ms-sevsnpvm-is-debuggable":false,"x-ms-sevsnpvm-vmpl":0});
        assert_eq!(policy.evaluate("https://maa.example/", &good), Ok(()));
        assert!(policy.any_uvm_warnings().is_empty());
        assert_eq!(policy.validate(), Ok(()));
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

    /// MAA's verdict on any other image: the generated policy must refuse it even when
    /// host_data (chosen by the host) matches.
    #[test]
    fn generated_policy_refuses_non_compliant_uvm() {
        let claims = |status: &str| {
            json!({"x-ms-attestation-type":"sevsnpvm","x-ms-compliance-status":status,
                "x-ms-sevsnpvm-launchmeasurement":"aa".repeat(48),
                "x-ms-sevsnpvm-hostdata":"abcd","x-ms-sevsnpvm-is-debuggable":false})
        };
        let policy = ReleasePolicy::for_hostdata("maa.example", "abcd", &[]);
        let err = policy
            .evaluate("https://maa.example", &claims(NON_COMPLIANT))
            .unwrap_err();
        assert!(err.contains("x-ms-compliance-status"), "{err}");
        let mut missing = claims(COMPLIANT_UVM);
        missing.as_object_mut().unwrap().remove(COMPLIANCE_CLAIM);
        assert!(policy.evaluate("https://maa.example", &missing).is_err());

        let kata = ReleasePolicy::for_workload(
            "maa.example",
            "abcd",
            &UvmRequirement::SignedKataccUvm,
            &[],
        );
        assert!(kata
            .evaluate("https://maa.example", &claims(SIGNED_KATACC_UVM))
            .is_ok());
        assert!(kata
            .evaluate("https://maa.example", &claims(COMPLIANT_UVM))
            .is_err());

        let pinned = ReleasePolicy::for_workload(
            "maa.example",
            "abcd",
            &UvmRequirement::LaunchMeasurement("AA".repeat(48)),
            &[],
        );
        assert!(pinned
            .evaluate("https://maa.example", &claims(NON_COMPLIANT))
            .is_ok());
        let mut other = claims(COMPLIANT_UVM);
        other[MEASUREMENT_CLAIM] = json!("bb".repeat(48));
        assert!(pinned.evaluate("https://maa.example", &other).is_err());
        assert!(kata.any_uvm_warnings().is_empty() && pinned.any_uvm_warnings().is_empty());
    }

    #[test]
    fn policies_that_release_to_any_uvm_are_flagged() {
        let open = ReleasePolicy::parse(
            br#"{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[
                {"claim":"x-ms-attestation-type","equals":"sevsnpvm"},
                {"claim":"x-ms-sevsnpvm-hostdata","equals":"abcd"}]}]}"#,
        )
        .unwrap();
        let warnings = open.any_uvm_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("https://a"), "{warnings:?}");
        // One branch of an anyOf that does not pin the UVM opens the whole rule.
        let branch = ReleasePolicy::parse(
            br#"{"version":"1.0.0","anyOf":[{"authority":"https://a","anyOf":[
                {"claim":"x-ms-compliance-status","equals":"azure-compliant-uvm"},
                {"claim":"x-ms-sevsnpvm-hostdata","equals":"abcd"}]}]}"#,
        )
        .unwrap();
        assert_eq!(branch.any_uvm_warnings().len(), 1);
        // Requiring the non-compliant verdict pins nothing.
        let wrong = ReleasePolicy::parse(
            br#"{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[
                {"claim":"x-ms-compliance-status","equals":"azure-non-compliant"}]}]}"#,
        )
        .unwrap();
        assert_eq!(wrong.any_uvm_warnings().len(), 1);
        let nested = ReleasePolicy::parse(
            br#"{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[
                {"anyOf":[{"claim":"x-ms-compliance-status","equals":"azure-compliant-uvm"},
                          {"claim":"x-ms-sevsnpvm-launchmeasurement","equals":"ab"}]}]}]}"#,
        )
        .unwrap();
        assert!(nested.any_uvm_warnings().is_empty());
    }

    #[test]
    fn empty_groups_are_invalid() {
        for text in [
            r#"{"version":"1.0.0","anyOf":[]}"#,
            r#"{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[]}]}"#,
            r#"{"version":"1.0.0","anyOf":[{"authority":"https://a","anyOf":[]}]}"#,
            r#"{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"x","equals":"1"},{"anyOf":[]}]}]}"#,
        ] {
            let policy = ReleasePolicy::parse(text.as_bytes()).unwrap();
            let err = policy.validate().unwrap_err();
            assert!(err.contains("empty"), "{text}: {err}");
        }
        // An empty allOf is vacuously true: this is why it must be refused.
        let vacuous = ReleasePolicy::parse(
            br#"{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[]}]}"#,
        )
        .unwrap();
        assert!(vacuous.evaluate("https://a", &json!({})).is_ok());
    }
}
