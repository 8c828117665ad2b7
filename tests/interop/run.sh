#!/usr/bin/env bash
# Interop: a Python grpcio client (from PyPI, stubs generated from proto/) against `aasp dev`.
# Installs what it needs into target/pyvenv; everything it writes stays under target/.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
venv=$root/target/pyvenv
stubs=$root/target/pystubs
state=$root/target/interop-state
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import grpc, grpc_tools, grpc_reflection, grpc_health' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check grpcio grpcio-tools grpcio-reflection grpcio-health-checking
fi
rm -rf "$stubs" "$state"
mkdir -p "$stubs"
"$venv/bin/python" -m grpc_tools.protoc -I"$root/proto" --python_out="$stubs" --grpc_python_out="$stubs" "$root"/proto/*.proto

cargo build --locked --quiet
port=$(( 50100 + RANDOM % 800 ))
log=$root/target/interop-dev.log
"$root/target/debug/aasp" dev --state-dir "$state" --listen "127.0.0.1:$port" > "$log" 2>&1 &
dev_pid=$!
trap 'kill $dev_pid 2>/dev/null; wait $dev_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q "Ctrl-C stops everything" "$log" && break
  kill -0 $dev_pid 2>/dev/null || { cat "$log"; echo "aasp dev exited early" >&2; exit 1; }
  sleep 0.2
done
grep -q "Ctrl-C stops everything" "$log" || { cat "$log"; echo "aasp dev did not start" >&2; exit 1; }
"$venv/bin/python" "$root/examples/python/aasp_client.py" --target "127.0.0.1:$port" --keys-dir "$state/keys" --stubs "$stubs"
