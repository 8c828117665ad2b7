#!/usr/bin/env bash
# Creates a venv with grpcio from PyPI and generates Python stubs from proto/.
#   examples/python/setup.sh VENV_DIR STUBS_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
proto=$here/../../proto
venv=$1
stubs=$2
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import grpc, grpc_tools, grpc_reflection, grpc_health' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check grpcio grpcio-tools grpcio-reflection grpcio-health-checking
fi
mkdir -p "$stubs"
"$venv/bin/python" -m grpc_tools.protoc -I"$proto" --python_out="$stubs" --grpc_python_out="$stubs" "$proto"/*.proto
