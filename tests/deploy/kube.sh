#!/usr/bin/env bash
# The Kubernetes journey, run: deploy/kubernetes/pod.yaml under `podman kube play`, with a
# manifest derived from it that swaps only the images (built here, no registry) and the endpoint
# and attester environment (aasp's emulator and simulator). Containers, commands, args, probes,
# security context, resources and volumes stay as shipped; derive.py checks that (container
# ports, which podman 4.3 would publish on the host, are dropped).
# The workload container must get its key from the sidecar over loopback, as on AKS, and the
# sidecar must log JSON lines (what `kubectl logs` and log collectors read).
#
# The emulator (`aasp dev`) runs inside the pod's network namespace (nsenter), so the pod reaches
# it on 127.0.0.1 and its dev CA's names (localhost, 127.0.0.1) hold. The sidecar's image carries
# the simulator's identity and the dev CA as test fixtures, made at test time.
#   tests/deploy/kube.sh BINARY [AASP_IMAGE]   e.g. target/debug/aasp localhost/aasp:test; without
#                                             an image, builds one from BINARY (deploy/image.sh)
# Needs root. Installs podman, runc, catatonit (the pause image's init), buildah and python3-venv
# when missing, and PyYAML in target/k8s-venv (tests/deploy/run.sh's venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
binary=$(realpath "$1")
base_image=${2:-}
work=$root/target/kube
venv=$root/target/k8s-venv
rm -rf "$work"
mkdir -p "$work"

fail() { echo "kube: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (podman's and buildah's storage, nsenter): sudo $0 $*"

# Debian's podman 4.3: crun refuses this host's hybrid cgroups (runc works), and the default
# ulimits are not permitted in a container. podman builds its pause image itself (catatonit),
# so the pod needs no registry.
cat > "$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
export CONTAINERS_CONF=$work/containers.conf
missing=""
for tool in podman:podman runc:runc catatonit:catatonit buildah:buildah nsenter:util-linux; do
  command -v "${tool%%:*}" >/dev/null || missing="$missing ${tool#*:}"
done
if [ -n "$missing" ]; then
  echo "kube: installing$missing to run the pod" >&2
  # shellcheck disable=SC2086 # one word per package
  apt-get install -y -qq $missing >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq $missing >/dev/null; } \
    || fail "apt-get install$missing failed"
fi
# The one reason to skip: a machine that cannot give a container its own namespaces or a
# cgroup (some nested sandboxes). Then no container engine runs a pod, and that is said.
if ! ns_err=$(unshare --mount --uts --ipc --net --pid --fork true 2>&1); then
  echo "kube: SKIPPED running the pod: this machine cannot create namespaces for a container (unshare: $ns_err); the manifests were still validated against the schemas"
  exit 0
fi
if [ ! -e /sys/fs/cgroup/cgroup.controllers ] && [ ! -d /sys/fs/cgroup/memory ]; then
  echo "kube: SKIPPED running the pod: no cgroup hierarchy at /sys/fs/cgroup (neither cgroup v2 nor the v1 memory controller); the manifests were still validated against the schemas"
  exit 0
fi
podman info >/dev/null 2>"$work/podman-info.err" \
  || fail "podman cannot run here although namespaces and cgroups work: $(head -c 600 "$work/podman-info.err")"
if ! "$venv/bin/python" -c 'import yaml' 2>/dev/null; then
  python3 -c 'import venv, ensurepip' 2>/dev/null \
    || apt-get install -y -qq python3-venv >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; } \
    || fail "apt-get install python3-venv failed"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check pyyaml
fi

# Names of this run only: the suite and a developer may run this at once on one machine.
pod=confidential-app-kube-$$
aasp_image=localhost/aasp-kube:$$
workload_image=localhost/aasp-workload:$$
emulator_port=$(( 24000 + RANDOM % 800 ))
dev_port=$(( emulator_port + 800 ))
E=127.0.0.1:$emulator_port
state=$work/state
dev_pid=""
own_base=""
cleanup() {
  if [ -n "$dev_pid" ]; then kill "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
  podman pod rm -f "$pod" >/dev/null 2>&1 || true
  podman rmi -f "$aasp_image" "$workload_image" ${own_base:+"$own_base"} >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # LOG TEXT PID
  for _ in $(seq 1 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || break
    sleep 0.2
  done
  cat "$1" >&2
  fail "'$2' never appeared in $1 (above)"
}

# 1. The emulator's state once on the host: simulator identity, dev CA, demo keys (persisted).
"$binary" dev --state-dir "$state" --listen "127.0.0.1:$dev_port" --emulator-listen "$E" > "$work/dev-host.log" 2>&1 &
dev_pid=$!
wait_for "$work/dev-host.log" "Ctrl-C stops everything" "$dev_pid"
kill "$dev_pid"; wait "$dev_pid" 2>/dev/null || true; dev_pid=""

# 2. Images. aasp: the production layout (deploy/image.sh) plus the fixtures under /etc/aasp-test.
# The workload: a shell, curl and sleep with their libraries, FROM scratch.
if [ -z "$base_image" ]; then
  base_image=localhost/aasp-kube-base:$$
  own_base=$base_image
  deploy/image.sh build "$binary" "$base_image"
fi
ctr=$(buildah from "$base_image")
mnt=$(buildah mount "$ctr")
install -d -m 0700 "$mnt/etc/aasp-test/state"
cp -a "$state/sim" "$mnt/etc/aasp-test/state/sim"
install -m 0644 "$state/emulator/ca.pem" "$mnt/etc/aasp-test/ca.pem"
buildah umount "$ctr" >/dev/null
buildah commit --quiet --format docker "$ctr" "$aasp_image" >/dev/null
buildah rm "$ctr" >/dev/null
ctr=$(buildah from scratch)
mnt=$(buildah mount "$ctr")
install -d "$mnt/bin" "$mnt/usr/bin"
install -d -m 1777 "$mnt/tmp"
tools="$(command -v dash) $(command -v curl) $(command -v sleep)"
cp -L "$(command -v dash)" "$mnt/bin/sh"
cp -L "$(command -v curl)" "$mnt/usr/bin/curl"
cp -L "$(command -v sleep)" "$mnt/bin/sleep"
# shellcheck disable=SC2086 # one word per tool
for lib in $(for t in $tools; do ldd "$t"; done | grep -oE '/[^ ]+' | sort -u); do
  install -d "$mnt$(dirname "$lib")"
  cp -L "$lib" "$mnt$lib"
done
# curl verifies nothing here (plain HTTP to the sidecar on loopback), but it loads its CA bundle.
install -d "$mnt/etc/ssl/certs"
cp -L /etc/ssl/certs/ca-certificates.crt "$mnt/etc/ssl/certs/"
buildah umount "$ctr" >/dev/null
buildah config --env PATH=/usr/bin:/bin "$ctr"
buildah commit --quiet --format docker "$ctr" "$workload_image" >/dev/null
buildah rm "$ctr" >/dev/null

# 3. The derived manifest (checked to keep the shipped structure), then the pod.
"$venv/bin/python" tests/deploy/derive.py deploy/kubernetes/pod.yaml "$work/pod.yaml" "$E" \
  "$aasp_image" "$workload_image" "$pod"
# No network but the pod's loopback: all the pod talks to is itself and the emulator, which
# joins its namespace. Nothing is published on the host, and no bridge or firewall is needed.
podman kube play --network none "$work/pod.yaml" > "$work/play.log" 2>&1 || { cat "$work/play.log" >&2; fail "podman kube play (its output above)"; }

# 4. The emulator inside the pod's network namespace, on the port the manifest names.
infra=$(podman pod inspect "$pod" --format '{{.InfraContainerID}}')
netns_pid=$(podman inspect --format '{{.State.Pid}}' "$infra")
nsenter --net="/proc/$netns_pid/ns/net" "$binary" dev --state-dir "$state" \
  --listen "127.0.0.1:$dev_port" --emulator-listen "$E" > "$work/dev-pod.log" 2>&1 &
dev_pid=$!
wait_for "$work/dev-pod.log" "Ctrl-C stops everything" "$dev_pid"

# 5. The workload gets its key (it retries every 2 s while the sidecar starts).
released=""
for _ in $(seq 1 200); do
  if podman logs "$pod-app" 2>/dev/null | grep -q "released into /tmp/key.json"; then released=yes; break; fi
  sleep 0.2
done
if [ -z "$released" ]; then
  podman logs "$pod-app" > "$work/app.log" 2>&1 || true
  podman logs "$pod-aasp" > "$work/aasp.log" 2>&1 || true
  echo "--- the workload's log (last lines; all of it in $work/app.log):" >&2; tail -n 3 "$work/app.log" >&2
  echo "--- the sidecar's log (last lines; all of it in $work/aasp.log):" >&2; tail -n 5 "$work/aasp.log" >&2
  fail "the workload got no key from the sidecar within 40 s; its last word: $(tail -n 1 "$work/app.log")"
fi
# The key the workload holds is the emulator's demo-oct key: compared, never printed. `podman cp`
# to stdout is a tar stream, so the key never lands in a file here.
same_key=$(cat <<'PY'
import base64, json, sys, tarfile
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
    member = next(iter(tar))
    released = json.loads(json.load(tar.extractfile(member))["key"])
stored = json.load(open(sys.argv[1]))
kty = released.get("kty", "")
if not kty.startswith("oct"):
    sys.exit(f"kube: FAILED: the workload holds a {kty!r} key, not demo-oct")
k = base64.urlsafe_b64decode(released["k"] + "=" * (-len(released["k"]) % 4))
if k != base64.b64decode(stored["oct"]):
    sys.exit("kube: FAILED: the key the workload holds is not the emulator's demo-oct key")
PY
)
podman cp "$pod-app:/tmp/key.json" - | "$venv/bin/python" -c "$same_key" "$state/emulator/demo-keys.json"

# 6. The sidecar as the kubelet sees it: its probes and its log format. The kubelet execs a
# probe's command in the container; podman 4.3 turns an exec probe into a CMD-SHELL healthcheck,
# which needs a shell the aasp image does not have, so the probes run here as the kubelet runs them.
for probe in readinessProbe livenessProbe; do
  mapfile -t command < <("$venv/bin/python" -c '
import sys, yaml
c = {c["name"]: c for c in yaml.safe_load(open(sys.argv[1]))["spec"]["containers"]}["aasp"]
print("\n".join(c[sys.argv[2]]["exec"]["command"]))' "$work/pod.yaml" "$probe")
  answer=$(podman exec "$pod-aasp" "${command[@]}" 2>&1) \
    || fail "the sidecar's $probe (${command[*]}) fails: $answer"
done
podman logs "$pod-aasp" > "$work/aasp.log" 2>&1
"$venv/bin/python" - "$work/aasp.log" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
if not lines:
    sys.exit("kube: FAILED: the sidecar logged nothing")
for line in lines:
    try:
        json.loads(line)
    except ValueError:
        sys.exit(f"kube: FAILED: the sidecar's log (AASP_LOG_FORMAT=json) has a line that is not JSON: {line!r}")
PY
# The chain came as on AKS: from the THIM that SkrSideCarArgs (LocalTHIM) names.
grep -q "certificate chain: THIM https://$E/metadata/THIM/amd/certification" "$work/aasp.log" \
  || fail "the sidecar did not take its chain from SkrSideCarArgs' LocalTHIM ($work/aasp.log)"
echo "kube: pod.yaml runs under podman kube play (runc, cgroupfs): the workload got its key from the sidecar over loopback; its readiness and liveness probes pass; the chain came from LocalTHIM; the sidecar logs JSON lines ($(wc -l < "$work/aasp.log"))"
