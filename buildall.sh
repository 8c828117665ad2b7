#!/usr/bin/env bash
# One entry point for building and testing aasp on a fresh machine.
#   ./buildall.sh build   release binary at target/release/aasp
#   ./buildall.sh test    formatting, clippy (-D warnings) and every test
#   ./buildall.sh image   container image aasp:latest: offline FROM scratch with buildah from the
#                         release binary, or deploy/Dockerfile with docker/podman (IMAGE_ENGINE=docker|podman)
#   ./buildall.sh bench   load figures (release build, loadgen against aasp dev)
#   ./buildall.sh static  static binary for guest images (target/<host>/release/aasp), then runs
#                         it alone in an empty root (chroot, as root) as the attestation agent
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

need_encfs_tools() {
  # tests/it/encfs_luks2.rs runs real cryptsetup, mkfs.ext4 and debugfs on plain files.
  if ! command -v cryptsetup >/dev/null || ! command -v mkfs.ext4 >/dev/null || ! command -v debugfs >/dev/null; then
    echo "buildall: installing cryptsetup-bin and e2fsprogs for the encfs tests" >&2
    apt-get update -qq && apt-get install -y -qq cryptsetup-bin e2fsprogs >/dev/null
  fi
}

run_tests() {
  need_rust
  need_encfs_tools
  cargo fmt --all -- --check
  cargo clippy --locked --all-targets -- -D warnings
  # Examples and benches are type-checked by clippy above; building and linking them again for
  # the test run only costs time (they run from `./buildall.sh bench`). Most integration tests
  # wait on child processes, sockets and timers rather than compute, so six run at once on two
  # cores: the `it` binary took 105 s with 6 threads against 161 s with the default 2 (same
  # machine, load average 9-12; 66 s of CPU either way).
  cargo test --locked --lib --bins --tests -- --test-threads 6
  need_python
  echo "interop: Python grpcio client against aasp dev"
  tests/interop/run.sh
  echo "deploy: manifests against the Kubernetes schemas; image built offline and run"
  tests/deploy/run.sh
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
  local engine=${IMAGE_ENGINE:-}
  if [ -z "$engine" ] && command -v buildah >/dev/null; then
    build
    deploy/image.sh build target/release/aasp localhost/aasp:latest
    return
  fi
  for candidate in $engine docker podman; do
    if command -v "$candidate" >/dev/null && "$candidate" info >/dev/null 2>&1; then engine=$candidate; break; fi
  done
  if [ -z "$engine" ]; then
    echo "buildall image: no buildah, and no working docker or podman (apt-get install buildah builds offline)" >&2
    exit 1
  fi
  "$engine" build -f deploy/Dockerfile -t aasp:latest .
}

# Figures for BENCHMARKS.md, all against release builds on loopback. Seconds per load run:
# BENCH_SECONDS (default 5). Parts: BENCH_PARTS (default "load rpc cold ready rss criterion handoff mixed fleet").
bench() {
  need_rust
  cargo build --release --locked --bin aasp --example loadgen --example cold_release --example time_to_ready --example rss \
    --example rpc_cost --example bare_server --example handoff --example fleet --example xts_cost \
    --example encfs_throughput
  local seconds=${BENCH_SECONDS:-5} parts=${BENCH_PARTS:-load rpc cold ready rss criterion handoff mixed fleet encfs}
  echo "machine: $(nproc) cores, $(uname -m), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(date -u +%Y-%m-%dT%H:%MZ)"
  case " $parts " in *" load "*) bench_dev_stack "$seconds" ;; esac
  case " $parts " in *" rpc "*)
    if ! command -v h2load >/dev/null; then
      echo "buildall: installing nghttp2-client for h2load" >&2
      apt-get install -y -qq nghttp2-client >/dev/null
    fi
    echo "== server CPU per call: aasp serve against a bare tonic/ttrpc server, one connection"
    target/release/examples/rpc_cost --rounds 3 --seconds "$seconds" ;;
  esac
  case " $parts " in *" cold "*)
    echo "== cold secure key release, by step (emulator in a separate aasp dev process)"
    target/release/examples/cold_release --aasp target/release/aasp --rounds 30 ;;
  esac
  case " $parts " in *" ready "*)
    echo "== process start to health SERVING (aasp serve --attester sim)"
    local port=$(( 23900 + RANDOM % 90 ))
    rm -rf target/bench-ready-state
    target/release/examples/time_to_ready --target "127.0.0.1:$port" --rounds 21 -- \
      target/release/aasp serve --attester sim --state-dir target/bench-ready-state --listen "127.0.0.1:$port" | tail -1 ;;
  esac
  case " $parts " in *" rss "*)
    echo "== resident memory of aasp serve --attester sim: idle, and after 64 concurrent clients"
    target/release/examples/rss --aasp target/release/aasp --work-dir target/bench-rss --rounds 3 ;;
  esac
  case " $parts " in *" criterion "*)
    echo "== criterion: warm UnWrapKey against the bare decrypt, one process"
    cargo bench --locked --bench warm_unwrap 2>&1 | grep -E "^warm_unwrap/|time:|^medians|^UnWrapKey|^cpu:" ;;
  esac
  case " $parts " in *" handoff "*)
    echo "== what moving a job off the async worker costs (inline, blocking pool, dedicated thread)"
    target/release/examples/handoff --rounds 3 --calls 1000 | grep -v "^round" ;;
  esac
  case " $parts " in *" mixed "*) bench_mixed "$seconds" ;; esac
  case " $parts " in *" fleet "*)
    echo "== a fleet scaling out against throttling: 40 aasp key release processes, emulator answering 429 to half of all requests"
    target/release/examples/fleet --aasp target/release/aasp --processes 40 --faults status=429@0.5 ;;
  esac
  case " $parts " in *" encfs "*)
    echo "== encfs: sector decryption CPU per GiB against bare AES-XTS loops"
    target/release/examples/xts_cost --rounds 3 --gib 1
    echo "== encfs: throughput and latency through the mount against Azurite (root for the mount parts)"
    target/release/examples/encfs_throughput --aasp target/release/aasp ;;
  esac
}

# SayHello latency alone and under 4 clients repeating UnWrapKey (RSA-3072, warm), with the
# decrypts on the blocking pool (the default) and on the async workers (--decrypt-threads 0),
# the background on its own connection and on SayHello's. Its own aasp dev per placement.
bench_mixed() {
  local seconds=$1 threads
  echo "== mixed load: SayHello (1 client) alone, then under 4 UnWrapKey clients"
  for threads in default 0; do
    local state=target/bench-mixed-state port=$(( 24000 + RANDOM % 800 )) flag=()
    [ "$threads" = default ] || flag=(--decrypt-threads "$threads")
    rm -rf "$state"
    target/release/aasp dev --state-dir "$state" --listen "127.0.0.1:$port" "${flag[@]}" > target/bench-mixed.log 2>&1 &
    mixed_pid=$!
    trap 'kill $mixed_pid 2>/dev/null || true' EXIT
    for _ in $(seq 1 150); do grep -q "Ctrl-C stops everything" target/bench-mixed.log && break; sleep 0.2; done
    echo "-- decrypt threads: $threads"
    for same in "" --background-same-connection; do
      target/release/examples/loadgen --target "127.0.0.1:$port" --rpc say-hello --concurrency 1 \
        --seconds "$seconds" --background unwrap-key:4 $same --server-pid "$mixed_pid"
    done
    kill "$mixed_pid" 2>/dev/null || true
    wait "$mixed_pid" 2>/dev/null || true
  done
}

# `aasp dev` in the background, then loadgen against it. Global pid so the EXIT trap still sees
# it after this function returns.
bench_dev_stack() {
  local seconds=$1 state=target/bench-state port=$(( 23000 + RANDOM % 800 ))
  rm -rf "$state"
  target/release/aasp dev --state-dir "$state" --listen "127.0.0.1:$port" > target/bench-dev.log 2>&1 &
  bench_pid=$!
  trap 'kill $bench_pid 2>/dev/null || true' EXIT
  for _ in $(seq 1 150); do grep -q "Ctrl-C stops everything" target/bench-dev.log && break; sleep 0.2; done
  echo "idle RSS of aasp dev (server + emulator): $(grep VmRSS /proc/$bench_pid/status)"
  echo "== loadgen (tonic client, one connection, N concurrent streams)"
  for rpc in say-hello get-report wrap-key; do
    for c in 1 8 64; do
      target/release/examples/loadgen --target "127.0.0.1:$port" --rpc "$rpc" --concurrency "$c" --seconds "$seconds" --server-pid "$bench_pid"
    done
  done
  target/release/examples/loadgen --target "127.0.0.1:$port" --rpc unwrap-key --concurrency 1 --seconds "$seconds" \
    --keys-dir "$state/keys" --compare-bare --server-pid "$bench_pid"
  echo "RSS of aasp dev after load: $(grep VmRSS /proc/$bench_pid/status)"
  ls -l target/release/aasp | awk '{print "release binary: " $5 " bytes"}'
  kill "$bench_pid" 2>/dev/null || true
}

# A statically linked binary for Kata guest images: glibc linked in (+crt-static on the gnu target;
# the musl standard library cannot be installed here) and name resolution that needs no NSS
# module whatever the glibc (feature static-dns). --target keeps the flag off build scripts and
# proc macros, which cannot be static. The chroot test needs this release build, too slow for
# `test`'s budget, so it runs here.
static_build() {
  need_rust
  local host bin
  host=$(rustc -vV | sed -n 's/^host: //p')
  case "$host" in
    *-linux-gnu) ;;
    *) echo "buildall static: builds on a *-linux-gnu host only (this is $host)" >&2; exit 1 ;;
  esac
  # getrandom finds the getrandom(2) wrapper with dlsym, which a static binary cannot do, and
  # falls back to /dev/urandom, absent from a bare root: ask for the system call itself.
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\"" \
    cargo build --release --locked --features static-dns --target "$host" --bin aasp
  bin=target/$host/release/aasp
  if readelf -l "$bin" | grep -q 'program interpreter'; then
    echo "buildall static: $bin still names a dynamic loader" >&2
    exit 1
  fi
  echo "built $bin (static, $(stat -c %s "$bin") bytes)"
  echo "static: $bin alone in an empty root (chroot) as the attestation agent"
  AASP_STATIC_BIN=$PWD/$bin cargo test --locked --test it static_binary:: -- --ignored
}

case "${1:-}" in
  build) build ;;
  static) static_build ;;
  bench) bench ;;
  test) run_tests ;;
  image) image ;;
  *) echo "usage: $0 build|test|image|bench|static" >&2; exit 2 ;;
esac
