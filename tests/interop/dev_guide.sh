#!/usr/bin/env bash
# The first hour with `aasp dev`: every `$` line it prints runs with bash exactly as printed, from
# the repository root as a newcomer pastes it (no tool is substituted: a missing one fails); the
# demo and your own secret come back from UnWrapKey; a secret wrapped with the printed `aasp wrap`
# line still unwraps after aasp dev restarts on the same state directory; a second aasp dev on a
# taken port fails naming the port and writes no state.
#   tests/interop/dev_guide.sh
# Ends with "N passed, M failed"; exit status 0 only when nothing failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
state=$root/target/interop-guide
source "$root/examples/lib.sh"
port=$(( 23500 + RANDOM % 400 ))
rm -f /tmp/aasp-secret.annotation /tmp/aasp-secret.out
start_dev "$state" "$port"

passed=0 failed=0
check() { # NAME OK [DETAIL]
  if [ "$2" = 0 ]; then
    passed=$((passed + 1)); echo "ok   $1"
  else
    failed=$((failed + 1)); echo "FAIL $1"; [ -z "${3:-}" ] || printf '%s\n' "$3" | tail -c 800 >&2
  fi
}
short() { local l=$1; [ ${#l} -lt 110 ] && echo "$l" || echo "${l:0:107}..."; }

mapfile -t lines < <(sed -n 's/^  \$ //p' "$state.log")
[ ${#lines[@]} -ge 12 ]; check "aasp dev printed ${#lines[@]} runnable lines" $?
for line in "${lines[@]}"; do
  rc=0
  out=$(bash -c "$line" 2>&1) || rc=$?
  check "$(short "$line")" "$rc" "$out"
  case $line in
    *"UnWrapKey --decode --annotation $state/demo-secret.annotation"*)
      grep -q '"optsdata": "hello from aasp dev"' <<<"$out"
      check "the demo annotation unwraps to its secret" $? "$out" ;;
    *"GetTeeType"*)
      grep -q '"tee": "snp"' <<<"$out"; check "the ttrpc agent socket answers GetTeeType" $? "$out" ;;
    *"encfs check "*)
      grep -q "\.img: opens with this key" <<<"$out"
      check "the encrypted demo image opens with its key, released to the simulated workload" $? "$out" ;;
    *"Health/Check"*)
      grep -q '"status": "SERVING"' <<<"$out"; check "health is SERVING" $? "$out" ;;
  esac
done
[ "$(cat /tmp/aasp-secret.out 2>/dev/null)" = "my secret" ]
check "your own secret, wrapped with the printed aasp wrap line, unwraps" $?

# A command printed without `$` (it runs until stopped, or needs root) follows a line saying so.
unmarked=$(awk '/^    [^ ]/ && prev !~ /so no `\$`/ { print } { prev = $0 }' "$state.log")
[ -z "$unmarked" ]; check "every command printed without \$ says why" $? "$unmarked"

# Port in use: refused before anything is written, naming the port and how to find its holder.
fresh=$root/target/interop-guide-second
rm -rf "$fresh"
rc=0
out=$("$AASP" dev --state-dir "$fresh" --listen "127.0.0.1:$port" 2>&1) || rc=$?
[ "$rc" != 0 ] && grep -q "port $port is already in use" <<<"$out" && [ ! -e "$fresh" ]
check "a taken port is named, and no state is written" $? "$out"

# Restart on the same state directory: the annotation wrapped above still unwraps.
kill "$DEV_PID"; wait "$DEV_PID" 2>/dev/null || true
"$AASP" dev --state-dir "$state" --listen "127.0.0.1:$port" > "$state.log2" 2>&1 &
DEV_PID=$!
for _ in $(seq 1 150); do grep -q "Ctrl-C stops everything" "$state.log2" && break; sleep 0.2; done
rc=0
out=$("$AASP" call --target "127.0.0.1:$port" keyprovider.KeyProviderService/UnWrapKey \
  --annotation /tmp/aasp-secret.annotation -o -) || rc=$?
[ "$rc" = 0 ] && [ "$out" = "my secret" ]
check "a secret wrapped before the restart unwraps after it" $? "$out"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
