#!/usr/bin/env bash
# Start a private single-node Slurm cluster (slurmctld + slurmd + munged) for tests and for
# trying `moecapd slurm` by hand. Everything lives under one directory: configs, state,
# spool, logs, PID files, the munge key and socket, and 8 fake GPUs (character devices)
# advertised as GRES. Nothing under /etc/slurm or /run/munge is read or written.
#
#   tools/slurm/start.sh DIR        (or MOECAP_SLURM_DIR=DIR tools/slurm/start.sh)
#   source DIR/env                  sets SLURM_CONF for sbatch/squeue/scancel/moecapd slurm
#   tools/slurm/stop.sh DIR
#
# Needs root (slurmd runs jobs as their users; mknod) and Debian's slurmctld, slurmd,
# slurm-client and munge packages. Settings (env): MOECAP_SLURM_GPUS (default 8),
# MOECAP_SLURM_CPUS (default 32), MOECAP_SLURM_KILLWAIT (seconds, default 10),
# MOECAP_SLURM_MAX_ARRAY_SIZE (default 1001, Slurm's),
# MOECAP_SLURM_PROCTRACK (cgroup or linuxproc; default: cgroup when the v1 freezer is
# mounted and writable, else linuxproc).
set -euo pipefail

dir=${1:-${MOECAP_SLURM_DIR:-}}
if [ -z "$dir" ]; then
  echo "usage: $0 DIR (a private directory for the cluster's configs, state, logs and munge socket)" >&2
  exit 2
fi
for b in munged mungekey slurmctld slurmd sinfo; do
  if ! command -v "$b" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$b" ]; then
    echo "$0: $b not found; install Slurm: apt-get install -y slurmctld slurmd slurm-client munge" >&2
    exit 2
  fi
done
export PATH=$PATH:/usr/sbin:/sbin
if [ "$(id -u)" != 0 ]; then
  echo "$0: must run as root (slurmd starts jobs as their users; fake GPUs need mknod)" >&2
  exit 2
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ -f "$dir/run/slurmctld.pid.keep" ] && kill -0 "$(cat "$dir/run/slurmctld.pid.keep")" 2>/dev/null; then
  echo "$0: a cluster already runs from $dir (slurmctld PID $(cat "$dir/run/slurmctld.pid.keep")); stop it with tools/slurm/stop.sh $dir" >&2
  exit 2
fi

gpus=${MOECAP_SLURM_GPUS:-8}
cpus=${MOECAP_SLURM_CPUS:-32}
killwait=${MOECAP_SLURM_KILLWAIT:-10}
max_array=${MOECAP_SLURM_MAX_ARRAY_SIZE:-1001}
node=moecapd-n1
host=$(hostname -s)

mkdir -p "$dir"/{etc,state,spool,log,run,munge,dev}
chmod 0755 "$dir" "$dir/run"
# munged refuses a socket directory others cannot traverse and a key others can read.
chmod 0711 "$dir/munge"

# Two free TCP ports for slurmctld and slurmd: a cluster per directory, side by side.
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 20000))
    if ! ss -Htan "( sport = :$p )" | grep -q .; then
      echo "$p"
      return
    fi
  done
  echo "$0: no free TCP port found" >&2
  exit 1
}
ctld_port=$(free_port)
slurmd_port=$(free_port)
while [ "$slurmd_port" = "$ctld_port" ]; do slurmd_port=$(free_port); done

proctrack=${MOECAP_SLURM_PROCTRACK:-}
if [ -z "$proctrack" ]; then
  proctrack=linuxproc
  if [ -d /sys/fs/cgroup/freezer ] && mkdir -p /sys/fs/cgroup/freezer/moecapd-probe.$$ 2>/dev/null; then
    rmdir /sys/fs/cgroup/freezer/moecapd-probe.$$
    proctrack=cgroup
  fi
fi

# Fake GPUs: gres.conf File= must name character devices (regular files are refused).
for i in $(seq 0 $((gpus - 1))); do
  [ -c "$dir/dev/nvidia$i" ] || mknod "$dir/dev/nvidia$i" c 195 "$i"
done

[ -f "$dir/munge/munge.key" ] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 0400 "$dir/munge/munge.key"
sock=$dir/munge/munge.socket

cat >"$dir/etc/slurm.conf" <<CONF
# Private single-node test cluster written by tools/slurm/start.sh.
ClusterName=moecapd
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/$proctrack
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
# A 2-core VM advertises the node the tests need (CPUs, memory, 8 GPUs).
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_min_interval=100000
# Short intervals so a test sees jobs start, end and get killed in seconds.
# Job ids name the jobs' cgroups (/sys/fs/cgroup/*/slurm/uid_N/job_ID): a random first id
# keeps two private clusters on one machine from sharing them.
FirstJobId=$((1000 + RANDOM * 16))
KillWait=$killwait
MaxArraySize=$max_array
MinJobAge=120
InactiveLimit=0
MessageTimeout=10
SlurmctldTimeout=30
SlurmdTimeout=30
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
AccountingStorageType=accounting_storage/none
MpiDefault=none
NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$cpus RealMemory=256000 Gres=gpu:$gpus State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
cat >"$dir/etc/gres.conf" <<CONF
NodeName=$node Name=gpu File=$dir/dev/nvidia[0-$((gpus - 1))]
CONF
cat >"$dir/etc/cgroup.conf" <<CONF
CgroupPlugin=autodetect
CgroupMountpoint=/sys/fs/cgroup
ConstrainDevices=no
CONF
cat >"$dir/env" <<ENV
export SLURM_CONF=$dir/etc/slurm.conf
ENV
export SLURM_CONF=$dir/etc/slurm.conf

keep() { # daemons delete their own PID files on exit: keep copies for stop.sh
  local name=$1 f=$dir/run/$1.pid
  for _ in $(seq 1 100); do
    if [ -s "$f" ]; then cp "$f" "$dir/run/$name.pid.keep"; return; fi
    sleep 0.05
  done
  echo "$0: $name did not write $f; see $dir/log/" >&2
  exit 1
}

munged --socket="$sock" --key-file="$dir/munge/munge.key" --pid-file="$dir/run/munged.pid" \
  --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munge.seed" --force
keep munged
slurmctld -c
keep slurmctld
slurmd -N "$node"
keep slurmd

for _ in $(seq 1 100); do
  st=$(sinfo -h -N -o '%T' 2>/dev/null || true)
  case $st in idle*) break ;; esac
  sleep 0.1
done
if [[ $st != idle* ]]; then
  echo "$0: node never became idle (state: ${st:-no answer}); logs in $dir/log/" >&2
  exit 1
fi
echo "slurm: cluster up in $dir (node $node: $gpus GPUs, $cpus CPUs, proctrack/$proctrack, ctld port $ctld_port)"
echo "slurm: source $dir/env   # sets SLURM_CONF"
