# Shared by the example scripts and the interop test (source it). Starts `aasp dev` in the
# background and waits until it serves:
#   start_dev STATE_DIR PORT
# sets DEV_PID, GRPC (host:port), EMULATOR (https URL), MAA (host:port), CA (dev CA file);
# stops it on exit. AASP (the binary) defaults to target/debug/aasp, building it if needed.
# Scripts pick their ports at random below 32768: Linux hands out outgoing connections' local
# ports from 32768-60999, so a port picked there can be taken by any client running meanwhile.
examples_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
AASP=${AASP:-$examples_root/target/debug/aasp}

start_dev() {
  local state=$1 port=$2 log=$1.log
  if [ ! -x "$AASP" ]; then (cd "$examples_root" && cargo build --quiet); fi
  rm -rf "$state"; mkdir -p "$(dirname "$state")"
  "$AASP" dev --state-dir "$state" --listen "127.0.0.1:$port" > "$log" 2>&1 &
  DEV_PID=$!
  trap 'kill $DEV_PID 2>/dev/null; wait $DEV_PID 2>/dev/null || true' EXIT
  for _ in $(seq 1 150); do
    grep -q "Ctrl-C stops everything" "$log" && break
    if ! kill -0 "$DEV_PID" 2>/dev/null; then cat "$log" >&2; echo "aasp dev exited early" >&2; return 1; fi
    sleep 0.2
  done
  grep -q "Ctrl-C stops everything" "$log" || { cat "$log" >&2; echo "aasp dev did not start" >&2; return 1; }
  GRPC=127.0.0.1:$port
  EMULATOR=$(sed -n 's/^Azure emulator: \(https:[^ ]*\) .*/\1/p' "$log")
  MAA=${EMULATOR#https://}
  CA=$state/emulator/ca.pem
}
