#!/usr/bin/env bash
# Encrypt and decrypt an OCI image layout with skopeo through aasp's keyprovider:
#   encrypt: --encryption-key provider:attestation-agent:aasp:demo-rsa
#   decrypt: --decryption-key provider:attestation-agent:aasp
# with OCICRYPT_KEYPROVIDER_CONFIG pointing at the file `aasp dev` writes. It needs a skopeo whose
# ocicrypt has keyprovider support ("provider:" keys); Debian 12's skopeo 1.9 does not, and this
# script says so and stops rather than pretend.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${WORK:-$root/target/example-image}
command -v skopeo >/dev/null || { echo "encrypted_image: skopeo is not installed (it needs keyprovider support)" >&2; exit 2; }
source "$root/examples/lib.sh"
start_dev "$work/state" $(( 22600 + RANDOM % 800 ))
export OCICRYPT_KEYPROVIDER_CONFIG=$work/state/ocicrypt_keyprovider.conf

# A one-layer OCI image layout, made here so no registry is needed.
layout=$work/plain
mkdir -p "$layout/blobs/sha256" "$work/rootfs"
echo "hello from an encrypted layer" > "$work/rootfs/hello.txt"
tar -C "$work/rootfs" -czf "$work/layer.tar.gz" hello.txt
blob() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); cp "$1" "$layout/blobs/sha256/$d"; echo "$d"; }
layer=$(blob "$work/layer.tar.gz"); layer_size=$(stat -c %s "$work/layer.tar.gz")
diffid=$(gzip -dc "$work/layer.tar.gz" | sha256sum | cut -d' ' -f1)
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"config":{}}' "$diffid" > "$work/config.json"
config=$(blob "$work/config.json"); config_size=$(stat -c %s "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$config" "$config_size" "$layer" "$layer_size" > "$work/manifest.json"
manifest=$(blob "$work/manifest.json"); manifest_size=$(stat -c %s "$work/manifest.json")
echo '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}' \
  "$manifest" "$manifest_size" > "$layout/index.json"

if ! skopeo copy --encryption-key provider:attestation-agent:aasp:demo-rsa "oci:$layout:v1" "oci:$work/encrypted:v1" 2> "$work/skopeo.err"; then
  if grep -qiE "provider|unsupported|invalid|unknown" "$work/skopeo.err"; then
    echo "encrypted_image: this skopeo ($(skopeo --version)) lacks ocicrypt keyprovider support; use a skopeo built with ocicrypt keyprovider (\"provider:\" keys)" >&2
    cat "$work/skopeo.err" >&2
    exit 2
  fi
  cat "$work/skopeo.err" >&2
  exit 1
fi
grep -q "+encrypted" "$work/encrypted/index.json" "$work"/encrypted/blobs/sha256/* 2>/dev/null && echo "layer encrypted"
skopeo copy --decryption-key provider:attestation-agent:aasp "oci:$work/encrypted:v1" "oci:$work/decrypted:v1"
echo "image decrypted through aasp (UnWrapKey → secure key release)"
