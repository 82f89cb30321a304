#!/usr/bin/env bash
# tools/leftovers.sh MARKER: fail, listing them, if any process whose environment carries
# MOECAPD_TEST_RUN=MARKER is still running. .ci/run exports that marker before the tests, so
# every process they start inherits it; after them nothing may carry it (the test binaries'
# reaper, launcher.RunTests, ends what a killed test binary left). Processes of other users
# are unreadable here, hence never ours.
set -uo pipefail
marker=${1:?usage: tools/leftovers.sh MARKER}
want="MOECAPD_TEST_RUN=$marker"
left=()
for _ in 1 2 3 4 5 6 7 8 9 10; do # a reaper may still be sweeping for a moment
  left=()
  for env in /proc/[0-9]*/environ; do
    pid=${env#/proc/}; pid=${pid%/environ}
    [ "$pid" = "$$" ] && continue
    if { tr "\0" "\n" <"$env"; } 2>/dev/null | grep -qxF "$want"; then
      state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || continue
      [ "$state" = Z ] && continue
      left+=("$pid")
    fi
  done
  [ ${#left[@]} -eq 0 ] && exit 0
  sleep 1
done
echo "the tests left ${#left[@]} process(es) running:" >&2
for pid in "${left[@]}"; do
  printf '  pid %s: %s\n' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" >&2
done
exit 1
