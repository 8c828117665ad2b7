#!/usr/bin/env bash
# Evidence and an MAA token, fetched as a Kata / confidential-containers component would from the
# attestation-agent API, then the evidence verified offline with `aasp verify`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${WORK:-$root/target/example-aa}
venv=${VENV:-$root/target/pyvenv}
stubs=${STUBS:-$root/target/pystubs}
source "$root/examples/lib.sh"
"$root/examples/python/setup.sh" "$venv" "$stubs"
start_dev "$work/state" $(( 21800 + RANDOM % 800 ))

"$venv/bin/python" "$here/aa_client.py" --target "$GRPC" --stubs "$stubs" --evidence-out "$work/evidence.json"
# The simulator's root must be trusted explicitly; on hardware AMD's embedded roots suffice.
"$AASP" verify --report "$work/evidence.json" --trust-root "$work/state/sim/ark.pem"
