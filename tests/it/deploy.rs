//! The deployment manifests parse and name only what the binary really has: its image, its
//! port, its flags and its environment variables (read from `aasp serve --help`), so the
//! manifests and the code cannot drift apart.

use crate::common;
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
    assert_eq!(spec["runtimeClassName"], "kata-cc-isolation", "{what}");
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
    // The chain source matches the platform: the UVM's local THIM through SkrSideCarArgs, as
    // Azure's AKS samples configure the SKR sidecar.
    let sidecar = aasp["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SkrSideCarArgs")
        .expect("SkrSideCarArgs");
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(sidecar["value"].as_str().unwrap())
        .unwrap();
    let args: Value = serde_json::from_slice(&decoded).unwrap();
    assert_eq!(args["certcache"]["endpoint_type"], "LocalTHIM", "{what}");
    assert_eq!(
        args["certcache"]["endpoint"], "169.254.169.254/metadata/THIM/amd/certification",
        "{what}"
    );
    // Root for the root-only guest device, and nothing more.
    let security = &aasp["securityContext"];
    assert_eq!(security["runAsUser"], 0, "{what}");
    assert_eq!(security["allowPrivilegeEscalation"], false, "{what}");
    assert_eq!(security["capabilities"]["drop"][0], "ALL", "{what}");
    assert!(security["privileged"].is_null(), "{what}: never privileged");
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
    // One pod in two wrappers: tests/deploy/kube.sh runs pod.yaml's, so it must be this one too.
    assert_eq!(
        deployment["spec"]["template"]["spec"], pod["spec"],
        "deployment.yaml's pod spec differs from pod.yaml's: keep them the same"
    );
    let sa = yaml("deploy/kubernetes/serviceaccount.yaml");
    assert!(sa["metadata"]["annotations"]["azure.workload.identity/client-id"].is_string());
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
fn dockerfile_and_offline_image_share_one_layout() {
    let docker = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let offline = std::fs::read_to_string(root().join("deploy/image.sh")).unwrap();
    assert!(docker.contains(r#"ENTRYPOINT ["aasp", "serve"]"#));
    assert!(offline.contains(r#"--entrypoint '["aasp", "serve"]'"#));
    let health = r#"CMD ["aasp", "health", "--target", "127.0.0.1:50000"]"#;
    assert!(docker.contains(health) && offline.contains(health));
    assert!(docker.contains("EXPOSE 50000") && offline.contains("--port 50000"));
    assert!(docker.contains("USER 65532:65532") && offline.contains("--user 65532:65532"));
    // The binary and the attestation-agent name for it, at the same paths.
    assert!(
        docker.contains("/out/usr/local/bin/aasp") && offline.contains("$root/usr/local/bin/aasp")
    );
    assert!(docker.contains("ln -s aasp /out/usr/local/bin/attestation-agent"));
    assert!(offline.contains(r#"ln -sf aasp "$root/usr/local/bin/attestation-agent""#));
    assert!(docker.contains("ln -s /usr/local/bin/aasp /out/skr.sh"));
    assert!(offline.contains(r#"ln -sf /usr/local/bin/aasp "$root/skr.sh""#));
    // Cargo.toml declares the bench and examples: the build context must carry them.
    for dir in ["benches", "examples", "src", "proto"] {
        assert!(docker.contains(&format!("COPY {dir} ./{dir}")), "{dir}");
    }
    let health = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["health", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&health.stdout).contains("--target"));
}

/// Without an SNP device, `aasp serve` keeps running and answers health NOT_SERVING (a pod
/// without the device is not ready, instead of crash-looping), and its log says why.
#[test]
fn serve_without_a_device_stays_up_not_serving() {
    if std::path::Path::new("/dev/sev-guest").exists() || std::path::Path::new("/dev/sev").exists()
    {
        return; // an SNP guest: the no-device path cannot be shown here
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let state = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("AASP_STATE_DIR", state.path())
        .env_remove("SkrSideCarArgs")
        .env_remove("AASP_ATTESTER")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let answer = common::health_until(&format!("127.0.0.1:{port}"), &mut server, 100, |a| {
        !a.is_empty()
    });
    let exited = server.try_wait().unwrap();
    let _ = server.kill();
    let output = server.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(exited, None, "serve exited without a device: {log}");
    assert_eq!(answer, "NOT_SERVING", "{log}");
    assert!(log.contains("no SNP guest device"), "{log}");
}
