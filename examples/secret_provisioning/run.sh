#!/usr/bin/env bash
# Secret provisioning, end to end, against `aasp dev`:
#  1. create an HSM key whose release policy is bound to the workload's security policy (host_data),
#  2. protect a secret file for it with `aasp wrap` (offline: only the public key is used),
#  3. get the secret back the way a workload container does: UnWrapKey over gRPC, which makes aasp
#     attest the TEE, obtain an MAA token, release the key from the HSM and decrypt,
#  4. compare.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${WORK:-$root/target/example-secret}
venv=${VENV:-$root/target/pyvenv}
stubs=${STUBS:-$root/target/pystubs}
source "$root/examples/lib.sh"
"$root/examples/python/setup.sh" "$venv" "$stubs"
start_dev "$work/state" $(( 21000 + RANDOM % 800 ))

# 1. The key, bound to the simulated workload's security policy.
hostdata=$("$AASP" policy digest --security-policy "$work/state/sim/security-context/security-policy-base64")
echo "workload host_data: $hostdata"
"$AASP" key create --kms "$EMULATOR" --name app-secret-key --kty rsa --size 3072 \
  --maa "$MAA" --hostdata "$hostdata" --imds-endpoint "$EMULATOR" --extra-ca "$CA" > "$work/key.json"
echo "created $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"]["kid"])' "$work/key.json")"

# 2. Protect a secret for it.
head -c 48 /dev/urandom | base64 > "$work/secret.txt"
"$AASP" wrap --key-ref "$EMULATOR/keys/app-secret-key?maa=$MAA" --imds-endpoint "$EMULATOR" --extra-ca "$CA" \
  --in "$work/secret.txt" --out "$work/secret.annotation"

# 3. The workload gets it back through UnWrapKey.
"$venv/bin/python" "$here/provision.py" --target "$GRPC" --stubs "$stubs" \
  --annotation "$work/secret.annotation" --out "$work/secret.provisioned"

# 4. Compare.
if cmp -s "$work/secret.txt" "$work/secret.provisioned"; then
  echo "secret provisioned: identical to the original"
else
  echo "secret provisioning FAILED: the provisioned secret differs" >&2
  exit 1
fi
