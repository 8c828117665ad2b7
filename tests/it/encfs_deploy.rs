//! The encfs deploy artifacts say what the binary does: `/encfs.sh` in both image layouts
//! starts `aasp encfs run`, and the Kubernetes pod and ACI template give the sidecar what
//! mounting needs (privileged, the shared volume with Bidirectional propagation) and the
//! workload what reading needs (HostToContainer), with settings `aasp encfs run` knows.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_aasp"))
        .args(["encfs", "run", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn encfs_sh_runs_the_sidecar_in_both_image_layouts() {
    let docker = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let offline = std::fs::read_to_string(root().join("deploy/image.sh")).unwrap();
    assert!(docker.contains("ln -s /usr/local/bin/aasp /out/encfs.sh"));
    assert!(offline.contains(r#"ln -sf /usr/local/bin/aasp "$root/encfs.sh""#));
    // Invoked by that name, the binary is `aasp encfs run`.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("encfs.sh");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_aasp"), &link).unwrap();
    let out = Command::new(&link).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(
        help.contains("EncfsSideCarArgs") && help.contains("--crypt"),
        "{help}"
    );
    // Without configuration it says what is missing.
    let out = Command::new(&link)
        .env_remove("EncfsSideCarArgs")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("EncfsSideCarArgs is not set"));
}

#[test]
fn the_kubernetes_pod_shares_the_mounts_with_the_workload() {
    let text = std::fs::read_to_string(root().join("deploy/kubernetes/encfs-pod.yaml")).unwrap();
    let pod: Value = serde_yaml::from_str(&text).unwrap();
    let help = run_help();
    let containers = pod["spec"]["containers"].as_array().unwrap();
    let find = |name: &str| containers.iter().find(|c| c["name"] == name).unwrap();
    let (app, sidecar) = (find("app"), find("encfs"));
    assert_eq!(sidecar["command"][0], "/encfs.sh");
    assert_eq!(sidecar["securityContext"]["privileged"], true);
    assert_eq!(
        sidecar["volumeMounts"][0]["mountPropagation"],
        "Bidirectional"
    );
    assert_eq!(
        app["volumeMounts"][0]["mountPropagation"],
        "HostToContainer"
    );
    assert_eq!(
        sidecar["volumeMounts"][0]["name"],
        app["volumeMounts"][0]["name"]
    );
    let volume = &pod["spec"]["volumes"][0];
    assert_eq!(volume["name"], sidecar["volumeMounts"][0]["name"]);
    assert!(volume["emptyDir"].is_object());
    for env in sidecar["env"].as_array().unwrap() {
        let name = env["name"].as_str().unwrap();
        assert!(
            help.contains(&format!("env: {name}")) || name == "SkrSideCarArgs",
            "{name} is not a setting of aasp encfs run"
        );
    }
}

#[test]
fn the_aci_template_runs_the_sidecar_privileged_beside_the_workload() {
    let template: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/aci/encfs.json")).unwrap(),
    )
    .unwrap();
    let help = run_help();
    let group = &template["resources"][0]["properties"];
    assert_eq!(group["sku"], "Confidential");
    let containers = group["containers"].as_array().unwrap();
    let find = |name: &str| &containers.iter().find(|c| c["name"] == name).unwrap()["properties"];
    let (app, sidecar) = (find("app"), find("encfs"));
    assert_eq!(sidecar["command"][0], "/encfs.sh");
    assert_eq!(sidecar["securityContext"]["privileged"], true);
    let volume = group["volumes"][0]["name"].as_str().unwrap();
    for c in [app, sidecar] {
        assert_eq!(c["volumeMounts"][0]["name"], volume);
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/mnt/remote");
    }
    for env in sidecar["environmentVariables"].as_array().unwrap() {
        let name = env["name"].as_str().unwrap();
        assert!(help.contains(&format!("env: {name}")), "{name}");
    }
    // The encfs JSON may hold a bearer token: a secure parameter, never a plain value.
    assert_eq!(
        template["parameters"]["encfsSideCarArgs"]["type"],
        "securestring"
    );
}
