#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (root), for the tests of mlmc.jobs' slurm backend.
# Installs Debian's slurm-wlm and munge when missing; idempotent: a cluster that already answers is left alone.
set -euo pipefail
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
if sinfo -h -o %a 2>/dev/null | grep -q up; then exit 0; fi
host=$(hostname -s)
read -r cpus mem < <(slurmd -C | awk '/NodeName/ {for (i=1;i<=NF;i++) {split($i,a,"="); v[a[1]]=a[2]}; print v["CPUs"], v["RealMemory"]}')
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=mlmc-ci
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmUser=root
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$((mem - 1024)) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=60 State=UP
CONF
rm -f /etc/slurm/cgroup.conf
[ -s /etc/munge/munge.key ] || mungekey -c -f
chown -R munge:munge /etc/munge /run/munge 2>/dev/null || true
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do
  if sinfo -h -o %a 2>/dev/null | grep -q up && sinfo -h -o %t | grep -Eq 'idle|mix|alloc'; then exit 0; fi
  sleep 1
done
echo "mlmc: the single-node SLURM cluster did not come up; see /var/log/slurm/" >&2
exit 1
