#!/usr/bin/env bash
# The first hour with `aasp dev`: every command it prints runs verbatim (dev_guide.py); a secret
# wrapped with the printed `aasp wrap` line still unwraps after aasp dev restarts on the same
# state directory; a second aasp dev on a taken port fails naming the port and writes no state.
#   tests/interop/dev_guide.sh VENV STUBS
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
venv=$1
stubs=$2
state=$root/target/interop-guide
source "$root/examples/lib.sh"
port=$(( 23500 + RANDOM % 400 ))
start_dev "$state" "$port"
rm -f /tmp/aasp-secret.annotation
"$venv/bin/python" "$root/tests/interop/dev_guide.py" "$state.log" "$stubs" "$root"

# Port in use: refused before anything is written.
fresh=$root/target/interop-guide-second
rm -rf "$fresh"
if out=$("$AASP" dev --state-dir "$fresh" --listen "127.0.0.1:$port" 2>&1); then
  echo "FAIL a second aasp dev on a taken port started" >&2; exit 1
fi
grep -q "port $port on 127.0.0.1 is already in use: another aasp" <<<"$out" \
  || { echo "FAIL port-in-use message: $out" >&2; exit 1; }
[ ! -e "$fresh" ] || { echo "FAIL state written before binding: $fresh exists" >&2; exit 1; }
echo "ok   a taken port is named, and no state is written"

# Restart on the same state directory: the annotation wrapped above still unwraps.
kill "$DEV_PID"; wait "$DEV_PID" 2>/dev/null || true
"$AASP" dev --state-dir "$state" --listen "127.0.0.1:$port" > "$state.log2" 2>&1 &
DEV_PID=$!
for _ in $(seq 1 150); do grep -q "Ctrl-C stops everything" "$state.log2" && break; sleep 0.2; done
grep -q "Ctrl-C stops everything" "$state.log2" || { cat "$state.log2" >&2; exit 1; }
"$venv/bin/python" - "127.0.0.1:$port" "$stubs" <<'PY'
import base64, json, sys
sys.path.insert(0, sys.argv[2])
import grpc, keyprovider_pb2, keyprovider_pb2_grpc
annotation = open("/tmp/aasp-secret.annotation").read()
request = {"op": "keyunwrap", "keyunwrapparams": {"dc": {"Parameters": {"attestation-agent": [base64.b64encode(b"aasp").decode()]}},
                                                  "annotation": annotation}}
stub = keyprovider_pb2_grpc.KeyProviderServiceStub(grpc.insecure_channel(sys.argv[1]))
out = stub.UnWrapKey(keyprovider_pb2.keyProviderKeyWrapProtocolInput(KeyProviderKeyWrapProtocolInput=json.dumps(request).encode()))
secret = bytes(json.loads(out.KeyProviderKeyWrapProtocolOutput)["keyunwrapresults"]["optsdata"])
assert secret == b"my secret", secret
print("ok   a secret wrapped before the restart unwraps after it")
PY
