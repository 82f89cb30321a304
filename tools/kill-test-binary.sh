#!/usr/bin/env bash
# tools/kill-test-binary.sh [TEST-REGEXP] [SECONDS]: the proof that a test binary killed
# mid-run leaves nothing behind. Builds cmd/moecapd's test binary, runs the selected tests
# (default TestSignalMidBench: moecapd with a sim server in its own session, mid-bench),
# SIGKILLs the test binary's process group after SECONDS (default 0 after its server is up; the test binary and the
# moecapd it runs die at once, as when a CI job is cancelled; the sim server, in a session of
# its own, would live on), then fails if any process it started (found by the
# MOECAPD_TEST_RUN marker, tools/leftovers.sh) is still running.
set -euo pipefail
cd "$(dirname "$0")/.."
export CGO_ENABLED=1 CGO_CFLAGS=-Wno-deprecated-declarations
run=${1:-TestSignalMidBench}
after=${2:-0}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
go test -race -c -o "$dir/moecapd.test" ./cmd/moecapd/
export MOECAPD_TEST_RUN="kill-$$-$(date +%s%N)"
(cd cmd/moecapd && exec setsid "$dir/moecapd.test" -test.run "$run" -test.v >"$dir/out" 2>&1) &
pid=$!
count() {
  local n=0 env
  for env in /proc/[0-9]*/environ; do
    { tr "\0" "\n" <"$env"; } 2>/dev/null | grep -qxF "MOECAPD_TEST_RUN=$MOECAPD_TEST_RUN" && n=$((n + 1))
  done
  echo $n
}
# Wait for the server (more than the test binary and moecapd carry the marker), SECONDS more,
# then kill at once while it runs.
n=0
for _ in $(seq 240); do n=$(count); [ "$n" -ge 3 ] && break; sleep 0.25; done
[ "$n" -ge 3 ] || { echo "no server seen in 60 s:"; tail -20 "$dir/out"; exit 1; }
sleep "$after"
echo "SIGKILL to the test binary's group; $n process(es) carried the marker just before"
kill -KILL -- "-$pid" || { echo "the test binary ended before the kill:"; tail -20 "$dir/out"; exit 1; }
wait "$pid" 2>/dev/null || true
tools/leftovers.sh "$MOECAPD_TEST_RUN"
echo "after SIGKILL of the test binary: nothing it started is running"
