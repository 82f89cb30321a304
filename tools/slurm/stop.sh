#!/usr/bin/env bash
# Stop a private cluster started by tools/slurm/start.sh DIR: cancel its jobs, stop slurmd,
# slurmctld and munged by the PIDs start.sh recorded, then end what is left of this
# cluster's jobs (slurmstepd and job processes outlive slurmd; they are found by the
# SLURM_CONF of this cluster in their environment, so another cluster's jobs are never
# touched). The directory itself is kept (logs); remove it when done.
#
#   tools/slurm/stop.sh DIR         (or MOECAP_SLURM_DIR=DIR tools/slurm/stop.sh)
set -uo pipefail

dir=${1:-${MOECAP_SLURM_DIR:-}}
if [ -z "$dir" ] || [ ! -d "$dir" ]; then
  echo "usage: $0 DIR (the directory given to tools/slurm/start.sh)" >&2
  exit 2
fi
dir=$(cd "$dir" && pwd)
conf=$dir/etc/slurm.conf
export PATH=$PATH:/usr/sbin:/sbin

# Let the controller signal its jobs first (a job's moecapd tears its server down on SIGTERM).
if [ -f "$conf" ] && [ -f "$dir/run/slurmctld.pid.keep" ] && kill -0 "$(cat "$dir/run/slurmctld.pid.keep")" 2>/dev/null; then
  SLURM_CONF=$conf timeout 10 scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
fi

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null && ! grep -q '^State:.*[ZX]' "/proc/$1/status" 2>/dev/null; }

# stop_pid NAME PID: SIGTERM, wait up to 5 s, SIGKILL.
stop_pid() {
  local name=$1 pid=$2
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 50); do alive "$pid" || return 0; sleep 0.1; done
  echo "slurm: $name (PID $pid) ignored SIGTERM for 5 s; killing" >&2
  kill -KILL "$pid" 2>/dev/null
}

# Processes of this cluster: every live process whose environment names its slurm.conf
# (slurmd passes SLURM_CONF on to slurmstepd and jobs), except the daemons stopped by PID.
cluster_pids() {
  local f p
  for f in $(grep -lzxF "SLURM_CONF=$conf" /proc/[0-9]*/environ 2>/dev/null); do
    p=${f#/proc/}
    p=${p%/environ}
    [ "$p" = $$ ] && continue
    case " $daemons " in *" $p "*) continue ;; esac
    alive "$p" && echo "$p"
  done
}
daemons=$(cat "$dir"/run/*.pid.keep 2>/dev/null | tr '\n' ' ')

# Give jobs a moment to end after scancel (their SIGTERM handlers tear servers down).
# (slurmscriptd is slurmctld's own helper: it goes with slurmctld.)
for _ in $(seq 1 50); do
  left=$(cluster_pids | while read -r p; do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = slurmscriptd ] || echo "$p"
  done)
  [ -z "$left" ] && break
  sleep 0.2
done

for name in slurmd slurmctld; do
  f=$dir/run/$name.pid.keep
  [ -f "$f" ] && stop_pid "$name" "$(cat "$f")"
done

left=$(cluster_pids)
if [ -n "$left" ]; then
  echo "slurm: ending leftover processes of this cluster: $(echo $left)" >&2
  kill -TERM $left 2>/dev/null
  sleep 1
  left=$(cluster_pids)
  [ -n "$left" ] && kill -KILL $left 2>/dev/null
fi

f=$dir/run/munged.pid.keep
[ -f "$f" ] && stop_pid munged "$(cat "$f")"
rm -f "$dir"/run/*.pid.keep
echo "slurm: cluster in $dir stopped"
