#!/usr/bin/env bash
# Interop: a Python grpcio client (from PyPI, stubs generated from proto/) against `aasp dev`.
# Installs what it needs into target/pyvenv; everything it writes stays under target/.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
venv=$root/target/pyvenv
stubs=$root/target/pystubs
state=$root/target/interop-state
rm -rf "$stubs" "$state"
"$root/examples/python/setup.sh" "$venv" "$stubs"

source "$root/examples/lib.sh"
start_dev "$state" $(( 20100 + RANDOM % 800 ))
"$venv/bin/python" "$root/examples/python/aasp_client.py" --target "$GRPC" --keys-dir "$state/keys" --stubs "$stubs"

# grpcio over a Unix socket: it sends the socket path as :authority.
"$venv/bin/python" "$root/tests/interop/unix_socket.py" "$AASP" "$stubs"

# KBS JWE: aasp against jwcrypto, both key algorithms (keys generated at run time).
"$venv/bin/python" -c 'import jwcrypto' 2>/dev/null \
  || "$venv/bin/pip" install --quiet --disable-pip-version-check jwcrypto
"$venv/bin/python" "$root/tests/interop/kbs_jwe.py" "$AASP"

# SKR sidecar drop-in: the sidecar's own client requests against aasp started as its /skr.sh.
"$root/tests/interop/skr.sh" "$venv" "$stubs"

# The first hour: every command aasp dev prints runs verbatim; wrapped secrets survive a restart.
"$root/tests/interop/dev_guide.sh"
