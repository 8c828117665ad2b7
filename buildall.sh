#!/usr/bin/env bash
# One entry point for building and testing aasp on a fresh machine.
#   ./buildall.sh build   release binary at target/release/aasp
#   ./buildall.sh test    formatting, clippy (-D warnings) and every test
#   ./buildall.sh image   container image (needs docker, podman or buildah)
#   ./buildall.sh bench   load figures (release build, loadgen against aasp dev)
set -euo pipefail
cd "$(dirname "$0")"

need_rust() {
  command -v cargo >/dev/null || { echo "buildall: cargo not found; install the Rust toolchain (rustup)" >&2; exit 1; }
  for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
      rustup component add "$component"
    fi
  done
}

build() {
  need_rust
  cargo build --release --locked
  echo "built target/release/aasp"
}

need_python() {
  if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "buildall: installing python3 and venv for the interop test" >&2
    apt-get update -qq && apt-get install -y -qq python3 python3-venv >/dev/null
  fi
}

run_tests() {
  need_rust
  cargo fmt --all -- --check
  cargo clippy --locked --all-targets -- -D warnings
  cargo test --locked --all-targets
  need_python
  echo "interop: Python grpcio client against aasp dev"
  tests/interop/run.sh
  run_examples
}

run_examples() {
  local ran=0
  echo "example: secret provisioning"
  examples/secret_provisioning/run.sh
  ran=$((ran + 1))
  echo "example: attestation agent"
  examples/attestation_agent/run.sh
  ran=$((ran + 1))
  if command -v skopeo >/dev/null; then
    echo "example: encrypted image"
    # Exit 2 means this skopeo cannot use keyproviders: a limit of the tool, not a failure here.
    local rc=0
    examples/encrypted_image/run.sh || rc=$?
    case $rc in 0) ran=$((ran + 1)) ;; 2) ;; *) return "$rc" ;; esac
  else
    echo "example: encrypted image skipped: skopeo is not installed"
  fi
  echo "examples: $ran passed, 0 failed"
}

image() {
  local engine=""
  for candidate in docker podman buildah; do
    if command -v "$candidate" >/dev/null && "$candidate" info >/dev/null 2>&1; then engine=$candidate; break; fi
  done
  if [ -z "$engine" ]; then
    echo "buildall image: no working container engine (docker, podman or buildah with a running daemon) on this machine" >&2
    exit 1
  fi
  if [ ! -f deploy/Dockerfile ]; then
    echo "buildall image: deploy/Dockerfile does not exist yet" >&2
    exit 1
  fi
  if [ "$engine" = buildah ]; then
    buildah bud -f deploy/Dockerfile -t aasp:latest .
  else
    "$engine" build -f deploy/Dockerfile -t aasp:latest .
  fi
}

# Load figures for BENCHMARKS.md: a release `aasp dev`, then examples/loadgen.rs per RPC and
# concurrency, with the server's CPU per request. Seconds per run: BENCH_SECONDS (default 5).
bench() {
  need_rust
  cargo build --release --locked --bin aasp --example loadgen
  local state=target/bench-state port=$(( 53000 + RANDOM % 800 )) seconds=${BENCH_SECONDS:-5}
  # Global, so the EXIT trap still sees it after this function returns.
  rm -rf "$state"
  target/release/aasp dev --state-dir "$state" --listen "127.0.0.1:$port" > target/bench-dev.log 2>&1 &
  bench_pid=$!
  local pid=$bench_pid
  trap 'kill $bench_pid 2>/dev/null' EXIT
  for _ in $(seq 1 150); do grep -q "Ctrl-C stops everything" target/bench-dev.log && break; sleep 0.2; done
  echo "machine: $(nproc) cores, $(uname -m); $(date -u +%Y-%m-%dT%H:%MZ)"
  for rpc in say-hello get-report wrap-key; do
    for c in 1 8 64; do
      target/release/examples/loadgen --target "127.0.0.1:$port" --rpc "$rpc" --concurrency "$c" --seconds "$seconds" --server-pid "$pid"
    done
  done
  target/release/examples/loadgen --target "127.0.0.1:$port" --rpc unwrap-key --concurrency 1 --seconds "$seconds" \
    --keys-dir "$state/keys" --compare-bare --server-pid "$pid"
  echo "idle RSS of aasp dev (server + emulator): $(grep VmRSS /proc/$pid/status)"
  ls -l target/release/aasp | awk '{print "release binary: " $5 " bytes"}'
}

case "${1:-}" in
  build) build ;;
  bench) bench ;;
  test) run_tests ;;
  image) image ;;
  *) echo "usage: $0 build|test|image|bench" >&2; exit 2 ;;
esac
