#!/usr/bin/env bash
# Deploy artifacts, for real: the Kubernetes manifests against the Kubernetes schemas
# (kubernetes-validate from PyPI, strict), the container image built offline FROM scratch
# with buildah and run from its mounted rootfs (deploy/image.sh), and the pod manifest run
# under `podman kube play` (tests/deploy/kube.sh). Everything it writes stays
# under target/ (and buildah's storage).
#   tests/deploy/run.sh [BINARY]   the image's binary; default target/debug/aasp, which
#   `cargo test` has just built: the release binary would cost a release build on CI for the
#   same layout (`./buildall.sh image` uses the release binary).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
binary=${1:-$root/target/debug/aasp}
venv=$root/target/k8s-venv

if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate
fi
# The AKS releases in support (1.32) and the newest schema the tool knows.
for version in 1.32.0 ""; do
  "$venv/bin/kubernetes-validate" ${version:+-k "$version"} --strict --quiet deploy/kubernetes/*.yaml
done
echo "deploy: deploy/kubernetes/*.yaml validate (strict) against Kubernetes 1.32 and $("$venv/bin/kubernetes-validate" --version)"

if ! command -v buildah >/dev/null; then
  echo "deploy: installing buildah to build the image offline" >&2
  apt-get update -qq && apt-get install -y -qq buildah >/dev/null
fi
# This run's own tag: the suite and a developer may run this at once on one machine.
tag=localhost/aasp:test-$$
trap 'buildah rmi "$tag" >/dev/null 2>&1 || true' EXIT
deploy/image.sh build "$binary" "$tag"
deploy/image.sh test "$tag"
tests/deploy/kube.sh "$binary" "$tag"
