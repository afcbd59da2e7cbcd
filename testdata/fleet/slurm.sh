#!/usr/bin/env bash
# A single-node Slurm cluster in a private folder, for the fleet test: munged
# (its own key and socket), slurmctld and slurmd daemonised with their state,
# logs and pid files under DIR; no systemd, no cgroups (proctrack/linuxproc,
# task/none). Usage: slurm.sh start DIR | stop DIR. After start,
# DIR/env holds SLURM_CONF for sbatch, squeue and sacct.
set -euo pipefail
PATH=$PATH:/usr/sbin:/sbin
cmd=$1 dir=$(realpath -m "$2")
stop() {
  for p in slurmd slurmctld munged; do
    if [ -f "$dir/$p.pid" ]; then kill "$(cat "$dir/$p.pid")" 2>/dev/null || true; fi
  done
  sleep 0.5
  for p in slurmd slurmctld munged; do
    if [ -f "$dir/$p.pid" ]; then kill -9 "$(cat "$dir/$p.pid")" 2>/dev/null || true; rm -f "$dir/$p.pid"; fi
  done
}
case $cmd in
stop) stop; exit 0 ;;
start) ;;
*) echo "usage: slurm.sh start|stop DIR" >&2; exit 2 ;;
esac
for t in munged mungekey slurmctld slurmd sbatch; do
  command -v "$t" >/dev/null || { echo "slurm.sh: $t missing (scripts/deps.sh: slurm-wlm munge)" >&2; exit 3; }
done
mkdir -p "$dir"/{munge,spool,state,log}
host=$(hostname -s)
# Ports of our own (beside any other cluster), from the folder's hash.
base=$((20000 + $(printf '%s' "$dir" | cksum | cut -d' ' -f1) % 20000))
mungekey -c -f -k "$dir/munge/munge.key" -b 1024
chmod 700 "$dir/munge"
munged -f --key-file "$dir/munge/munge.key" --socket "$dir/munge/munge.socket" \
  --pid-file "$dir/munged.pid" --log-file "$dir/log/munged.log" --seed-file "$dir/munge/seed" --num-threads 2
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2/1024/2)}' /proc/meminfo)
cat > "$dir/slurm.conf" <<CONF
ClusterName=vmscope-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$base
SlurmdPort=$((base + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=test Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
CONF
echo "export SLURM_CONF=$dir/slurm.conf" > "$dir/env"
export SLURM_CONF=$dir/slurm.conf
slurmctld -i
slurmd
for i in $(seq 1 100); do
  if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then exit 0; fi
  sleep 0.2
done
echo "slurm.sh: the node never came up:" >&2
sinfo >&2 || true
tail -20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
stop
exit 1
