#!/usr/bin/env bash
# SKR sidecar drop-in: aasp started exactly as the sidecar's /skr.sh starts (SkrSideCarArgs with a
# LocalTHIM certcache, Port, ServerType; the binary invoked as skr.sh), once for REST and once for
# gRPC, against the emulator of `aasp dev`; then the sidecar's own client requests
# (tests/interop/skr_client.py). Needs the venv and stubs tests/interop/run.sh made.
#   tests/interop/skr.sh VENV STUBS
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
venv=$1
stubs=$2
state=$root/target/interop-skr
rm -rf "$state"
"$venv/bin/python" -c 'import requests' 2>/dev/null \
  || "$venv/bin/pip" install --quiet --disable-pip-version-check requests

source "$root/examples/lib.sh"
start_dev "$state/dev" $(( 22900 + RANDOM % 600 ))

# The sidecar's command name: a symlink named skr.sh runs `aasp skr`.
mkdir -p "$state/bin"
ln -sf "$AASP" "$state/bin/skr.sh"
rest_port=$(( 21000 + RANDOM % 400 ))
grpc_port=$(( rest_port + 400 ))
certcache=$(printf '{"certcache":{"endpoint_type":"LocalTHIM","endpoint":"%s/metadata/THIM/amd/certification"}}' "$EMULATOR" | base64 -w0)
# Only the emulator needs aasp's own settings: the simulated device (same chip as aasp dev's),
# the emulator as IMDS, its dev CA, and its host on the MAA/KMS allow-lists (on Azure the
# defaults, *.attest.azure.net and *.managedhsm.azure.net/*.vault.azure.net, cover the
# sidecar's endpoints). The chain source comes from SkrSideCarArgs.
skr_env=(SkrSideCarArgs="$certcache" AASP_ATTESTER=sim AASP_STATE_DIR="$state/dev"
         AASP_CERT_SOURCE=thim AASP_IMDS_ENDPOINT="$EMULATOR" AASP_EXTRA_CA="$CA"
         AASP_ALLOW_MAA_HOST="$MAA" AASP_ALLOW_KMS_HOST="$MAA" LogLevel=info)
env "${skr_env[@]}" Port="$rest_port" LogFile="$state/rest.log" "$state/bin/skr.sh" > "$state/rest.out" 2>&1 &
rest_pid=$!
env "${skr_env[@]}" Port="$grpc_port" ServerType=grpc "$state/bin/skr.sh" > "$state/grpc.log" 2>&1 &
grpc_pid=$!
trap 'kill $rest_pid $grpc_pid $DEV_PID 2>/dev/null; wait 2>/dev/null || true' EXIT

# The offline wrap of the sidecar's test (`skr -infile -keypath -outfile`): a key-info file as
# its tests write one (absolute public_key_path, endpoints without a scheme) beside the key path.
keys=$state/skrkeys
mkdir -p "$keys"
printf '{"public_key_path":"%s","kms_endpoint":"%s","attester_endpoint":"%s"}' \
  "$state/dev/keys/demo-rsa.pem" "$MAA" "$MAA" > "$keys/demo-rsa-info.json"
printf 'Oceans are full of water\nHorses have 4 legs' > "$state/payload.txt"
"$AASP" wrap --key-ref "$keys/demo-rsa" --in "$state/payload.txt" --out "$state/wrapped"

for _ in $(seq 1 100); do
  grep -q "serving gRPC" "$state/grpc.log" && grep -q "serving the SKR REST API" "$state/rest.out" && break
  sleep 0.2
done
if ! "$venv/bin/python" "$root/tests/interop/skr_client.py" --rest "127.0.0.1:$rest_port" \
  --grpc "127.0.0.1:$grpc_port" --stubs "$stubs" --maa "$MAA" --hsm "$MAA" \
  --key-path "$keys/demo-rsa" --wrapped "$state/wrapped" --payload "$state/payload.txt"; then
  echo "--- REST (LogFile)"; cat "$state/rest.log" "$state/rest.out"; echo "--- gRPC"; cat "$state/grpc.log"
  exit 1
fi
# LogFile and LogLevel took effect: info lines in the file, not on the terminal.
grep -q "SERVING" "$state/rest.log" || { echo "skr: LogFile $state/rest.log has no info lines" >&2; exit 1; }
