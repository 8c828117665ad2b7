"""Derives the manifest tests/deploy/kube.sh runs from a shipped pod manifest: swaps only the
images and the endpoint/attester environment and drops documentation-only container ports (see
below), then checks that everything else (containers, commands, args, probes, security context,
resources, volumes) is exactly as shipped.

    derive.py SHIPPED OUT EMULATOR_HOST_PORT AASP_IMAGE WORKLOAD_IMAGE POD_NAME

POD_NAME renames the pod (metadata.name), so that concurrent runs on one machine do not meet.
"""
import base64
import copy
import json
import sys

import yaml

shipped_path, out_path, emulator, aasp_image, workload_image, pod_name = sys.argv[1:7]
shipped = yaml.safe_load(open(shipped_path))
pod = copy.deepcopy(shipped)
pod["metadata"]["name"] = pod_name
containers = {c["name"]: c for c in pod["spec"]["containers"]}


def set_env(container, name, value):
    for var in container.setdefault("env", []):
        if var["name"] == name:
            var["value"] = value
            return
    container["env"].append({"name": name, "value": value})


aasp = containers["aasp"]
aasp["image"] = aasp_image
# Endpoints: the emulator in the pod's network namespace.
set_env(aasp, "AASP_MAA_ENDPOINT", emulator)
thim = {"certcache": {"endpoint_type": "LocalTHIM",
                      "endpoint": f"https://{emulator}/metadata/THIM/amd/certification"}}
set_env(aasp, "SkrSideCarArgs", base64.b64encode(json.dumps(thim).encode()).decode())
set_env(aasp, "AASP_IMDS_ENDPOINT", f"https://{emulator}")
set_env(aasp, "AASP_ALLOW_KMS_HOST", emulator)
set_env(aasp, "AASP_EXTRA_CA", "/etc/aasp-test/ca.pem")
# Attester: the simulator whose identity the emulator trusts. The chain still comes through
# SkrSideCarArgs' LocalTHIM, as on AKS (with the simulator, `auto` reads its own directory).
set_env(aasp, "AASP_ATTESTER", "sim")
set_env(aasp, "AASP_CERT_SOURCE", "thim")
set_env(aasp, "AASP_STATE_DIR", "/etc/aasp-test/state")

app = containers["app"]
app["image"] = workload_image
set_env(app, "MAA_ENDPOINT", emulator)
set_env(app, "KMS_ENDPOINT", emulator)
set_env(app, "KEY_NAME", "demo-oct")

# Ports: a containerPort without hostPort only documents a port on Kubernetes (aasp listens on
# the pod's loopback, so nothing outside reaches it anyway), but podman 4.3 publishes it on the
# host (0.0.0.0:50000, clashing with an `aasp dev` there) and then refuses `--network none`.
# Such ports are dropped; a hostPort would mean something, so the shipped manifest must have none.
for c in pod["spec"]["containers"]:
    for port in c.pop("ports", []):
        assert "hostPort" not in port, f"{c['name']}: a hostPort is more than documentation: {port}"


# What may differ: images, env values and documentation-only ports; env names may only be
# added, never dropped.
def structure(p):
    p = copy.deepcopy(p)
    p["metadata"].pop("name")
    for c in p["spec"]["containers"]:
        c.pop("image")
        c.pop("ports", None)
        c["env"] = sorted(v["name"] for v in c.get("env", []))
    return p


a, b = structure(shipped), structure(pod)
for ca, cb in zip(a["spec"]["containers"], b["spec"]["containers"]):
    missing = set(ca["env"]) - set(cb["env"])
    assert not missing, f"derived manifest dropped {missing}"
    ca["env"] = cb["env"] = []
assert a == b, "the derived manifest changed more than images and environment"
assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "aasp"]

yaml.safe_dump(pod, open(out_path, "w"), sort_keys=False)
print(f"derived {out_path} from {shipped_path}: images and endpoint/attester environment swapped, documentation-only ports dropped")
