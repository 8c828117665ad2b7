#!/usr/bin/env bash
# The aasp container image, built offline FROM scratch with buildah (no registry, no base image),
# and its test. deploy/Dockerfile produces the same layout for users with registry access:
#   /usr/local/bin/aasp                     the binary (ENTRYPOINT aasp serve)
#   /usr/local/bin/attestation-agent -> aasp  the CoCo attestation-agent name
#   /skr.sh -> /usr/local/bin/aasp          the SKR sidecar's command (runs `aasp skr`)
#   /encfs.sh -> /usr/local/bin/aasp        the encfs sidecar's command (runs `aasp encfs run`)
#   /etc/ssl/certs/ca-certificates.crt      CA bundle (MAA, Managed HSM, THIM over TLS)
#   /etc/passwd, /etc/group                 root and nonroot (65532:65532, as distroless)
#   /home/nonroot, /tmp                     HOME of the default user, scratch space
#   the binary's shared libraries (glibc, libgcc_s) at the paths ldd names
#
#   deploy/image.sh build BINARY TAG   image TAG from BINARY (e.g. target/release/aasp)
#   deploy/image.sh test TAG           mount TAG, run its entrypoint in a chroot as the image's
#                                      user, and ask it for health with the image's own binary
# Needs root (buildah's storage) and buildah.
set -euo pipefail
# Docker format: OCI image configs have no HEALTHCHECK.
export BUILDAH_FORMAT=docker

layout() {
  local bin=$1 root=$2
  install -d -m 0755 "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/home/nonroot"
  install -d -m 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  install -m 0755 "$bin" "$root/usr/local/bin/aasp"
  ln -sf aasp "$root/usr/local/bin/attestation-agent"
  ln -sf /usr/local/bin/aasp "$root/skr.sh"
  ln -sf /usr/local/bin/aasp "$root/encfs.sh"
  # The dynamic loader and every library ldd resolves, at the same paths.
  local lib
  for lib in $(ldd "$bin" | grep -oE '/[^ ]+'); do
    install -d "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  local bundle=/etc/ssl/certs/ca-certificates.crt
  [ -f "$bundle" ] || { echo "image: $bundle missing (apt-get install ca-certificates)" >&2; exit 1; }
  cp -L "$bundle" "$root$bundle"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
}

build() {
  local bin=$1 tag=$2 ctr mnt
  [ -x "$bin" ] || { echo "image: $bin is not an executable" >&2; exit 1; }
  ctr=$(buildah from scratch)
  trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' RETURN
  mnt=$(buildah mount "$ctr")
  layout "$bin" "$mnt"
  buildah umount "$ctr" >/dev/null
  buildah config \
    --env PATH=/usr/local/bin:/usr/bin:/bin \
    --user 65532:65532 \
    --workingdir /home/nonroot \
    --port 50000 \
    --healthcheck 'CMD ["aasp", "health", "--target", "127.0.0.1:50000"]' \
    --healthcheck-interval 10s --healthcheck-timeout 5s --healthcheck-start-period 5s \
    --entrypoint '["aasp", "serve"]' \
    --label org.opencontainers.image.source=https://github.com/aasp/aasp \
    "$ctr"
  buildah commit --quiet --format docker "$ctr" "$tag" >/dev/null
  echo "image: built $tag from $bin"
}

# Runs the image's entrypoint (plus ARGS) in a chroot of the mounted image, as its user, and
# waits for `aasp health` (run from the image too) to print WANT. Echoes the server's log on failure.
run_and_probe() {
  local mnt=$1 port=$2 want=$3; shift 3
  local log=$mnt/tmp/serve.log pid out="" i
  env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/home/nonroot "$(command -v chroot)" --userspec=65532:65532 "$mnt" \
    aasp serve --listen "127.0.0.1:$port" "$@" >"$log" 2>&1 &
  pid=$!
  for i in $(seq 1 100); do
    out=$(chroot --userspec=65532:65532 "$mnt" /usr/local/bin/aasp health --target "127.0.0.1:$port" 2>/dev/null || true)
    [ "$out" = "$want" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ "$out" != "$want" ]; then
    echo "image test: expected health $want, got '${out}'; server log:" >&2
    cat "$log" >&2
    return 1
  fi
}

test_image() {
  local tag=$1 ctr mnt user entry port=$(( 22000 + RANDOM % 800 ))
  user=$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$tag")
  entry=$(buildah inspect --type image --format '{{.OCIv1.Config.Entrypoint}}' "$tag")
  [ "$user" = "65532:65532" ] || { echo "image test: user is '$user'" >&2; return 1; }
  [ "$entry" = '[aasp serve]' ] || { echo "image test: entrypoint is $entry" >&2; return 1; }
  ctr=$(buildah from "$tag")
  trap 'buildah umount "$ctr" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true' RETURN
  mnt=$(buildah mount "$ctr")
  [ "$(readlink "$mnt/usr/local/bin/attestation-agent")" = aasp ] || { echo "image test: attestation-agent symlink missing" >&2; return 1; }
  chroot "$mnt" /usr/local/bin/attestation-agent --version >/dev/null
  # A pod written for the SKR sidecar keeps `command: ["/skr.sh"]`.
  chroot "$mnt" /skr.sh --help | grep -q ServerType || { echo "image test: /skr.sh is not aasp skr" >&2; return 1; }
  # No SNP device in a build container: the entrypoint keeps running and reports NOT_SERVING.
  run_and_probe "$mnt" "$port" NOT_SERVING
  grep -q "no SNP guest device" "$mnt/tmp/serve.log" || { echo "image test: no device log line" >&2; cat "$mnt/tmp/serve.log" >&2; return 1; }
  # The simulator, with the chain read from its security-context directory (no network): SERVING.
  run_and_probe "$mnt" "$((port + 1))" SERVING --attester sim --state-dir /tmp/aasp-state
  echo "image test: $tag entrypoint starts as 65532; health NOT_SERVING without a device, SERVING with the simulator"
}

case "${1:-}" in
  build) build "$2" "$3" ;;
  test) test_image "$2" ;;
  *) echo "usage: $0 build BINARY TAG | test TAG" >&2; exit 2 ;;
esac
