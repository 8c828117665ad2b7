//! The deployment manifests parse and name only what the binary really has: its image, its
//! port, its flags and its environment variables (read from `aasp serve --help`), so the
//! manifests and the code cannot drift apart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Environment variables the platform or the upstream sidecar define, which aasp reads.
const PLATFORM_VARS: [&str; 7] = [
    "UVM_SECURITY_CONTEXT_DIR",
    "SkrSideCarArgs",
    "AaspSideCarArgs",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "OCICRYPT_KEYPROVIDER_CONFIG",
];

struct Help {
    flags: BTreeSet<String>,
    envs: BTreeSet<String>,
    text: String,
}

fn serve_help() -> Help {
    let out = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let flags = text
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| {
            w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-')
                .to_owned()
        })
        .collect();
    let envs = text
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split('=').next())
        .map(str::to_owned)
        .collect();
    Help { flags, envs, text }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn check_flags(help: &Help, args: &[Value], what: &str) {
    for arg in args
        .iter()
        .filter_map(Value::as_str)
        .filter(|a| a.starts_with("--"))
    {
        assert!(
            help.flags.contains(arg),
            "{what}: {arg} is not an aasp serve flag"
        );
    }
}

fn check_env(help: &Help, env: &[Value], what: &str) {
    for var in env {
        let name = var["name"].as_str().unwrap();
        assert!(
            help.envs.contains(name) || PLATFORM_VARS.contains(&name),
            "{what}: aasp does not read {name}"
        );
    }
}

fn check_pod_spec(help: &Help, spec: &Value, what: &str) {
    assert_eq!(spec["runtimeClassName"], "kata-cc", "{what}");
    assert_eq!(spec["serviceAccountName"], "aasp", "{what}");
    let aasp = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "aasp")
        .expect("an aasp container");
    assert!(
        aasp["image"].as_str().unwrap().starts_with("aasp"),
        "{what}"
    );
    let args = aasp["args"].as_array().unwrap();
    check_flags(help, args, what);
    for pair in args.windows(2) {
        if pair[0] == "--listen" || pair[0] == "--rest-listen" {
            assert!(
                pair[1].as_str().unwrap().starts_with("127.0.0.1:"),
                "{what}: sidecar listeners stay on loopback"
            );
        }
    }
    check_env(help, aasp["env"].as_array().unwrap(), what);
    assert_eq!(aasp["ports"][0]["containerPort"], 50000, "{what}");
    assert!(help.text.contains("[default: 127.0.0.1:50000]"));
    for probe in ["readinessProbe", "livenessProbe"] {
        let command: Vec<&str> = aasp[probe]["exec"]["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            command,
            ["aasp", "health", "--target", "127.0.0.1:50000"],
            "{what} {probe}"
        );
    }
    assert!(
        aasp["resources"]["limits"]["memory"].is_string(),
        "{what}: memory limit"
    );
    let mounts: Vec<&str> = aasp["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    let context_dir = aasp["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "UVM_SECURITY_CONTEXT_DIR")
        .unwrap();
    assert!(
        mounts.contains(&context_dir["value"].as_str().unwrap()),
        "{what}: the security context is mounted where aasp looks"
    );
}

#[test]
fn kubernetes_pod_and_deployment() {
    let help = serve_help();
    let pod = yaml("deploy/kubernetes/pod.yaml");
    assert_eq!(
        pod["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
    check_pod_spec(&help, &pod["spec"], "pod.yaml");
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"],
        "true"
    );
    check_pod_spec(
        &help,
        &deployment["spec"]["template"]["spec"],
        "deployment.yaml",
    );
    let sa = yaml("deploy/kubernetes/serviceaccount.yaml");
    assert!(sa["metadata"]["annotations"]["azure.workload.identity/client-id"].is_string());
}

#[test]
fn ocicrypt_configmap_points_at_the_default_listener() {
    let cm = yaml("deploy/kubernetes/ocicrypt-configmap.yaml");
    let conf: Value =
        serde_json::from_str(cm["data"]["ocicrypt_keyprovider.conf"].as_str().unwrap()).unwrap();
    assert_eq!(
        conf["key-providers"]["attestation-agent"]["grpc"],
        "127.0.0.1:50000"
    );
}

#[test]
fn aci_template() {
    let help = serve_help();
    let template: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/aci/template.json")).unwrap(),
    )
    .unwrap();
    assert!(template["parameters"]["ccePolicy"].is_object());
    let group = &template["resources"][0];
    assert_eq!(group["properties"]["sku"], "Confidential");
    assert_eq!(group["identity"]["type"], "UserAssigned");
    let aasp = group["properties"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "aasp")
        .unwrap();
    let command = aasp["properties"]["command"].as_array().unwrap();
    assert_eq!(command[..2], [Value::from("aasp"), Value::from("serve")]);
    check_flags(&help, command, "aci");
    check_env(
        &help,
        aasp["properties"]["environmentVariables"]
            .as_array()
            .unwrap(),
        "aci",
    );
}

#[test]
fn dockerfile() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    assert!(text.contains(r#"ENTRYPOINT ["aasp", "serve"]"#));
    assert!(text.contains("EXPOSE 50000"));
    assert!(text.contains(r#"CMD ["aasp", "health", "--target", "127.0.0.1:50000"]"#));
    assert!(text.contains("USER nonroot"));
    let health = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["health", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&health.stdout).contains("--target"));
}
