#!/usr/bin/env bash
# A one-node Slurm (slurmctld + slurmd + munge) on 127.0.0.1, for the tests and for trying the
# sbatch scripts on one machine. Needs root (like CI). Idempotent: when the daemons already run and
# the node answers, `up` returns at once.
#
#   cluster/slurm/dev-cluster.sh up      # install where missing (apt-get), configure, start
#   cluster/slurm/dev-cluster.sh down    # stop the daemons this script started
#
# It writes /etc/slurm/slurm.conf only when there is none or it is one this script wrote (first
# line below): an existing site configuration is never touched.
set -euo pipefail

MARKER="# dfm-video dev-cluster.sh: one-node Slurm on 127.0.0.1"
CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)

log() { echo "dev-cluster: $*" >&2; }

node_ready() {
    pgrep -x slurmctld >/dev/null && pgrep -x slurmd >/dev/null && pgrep -x munged >/dev/null || return 1
    local state
    state=$(timeout 5 sinfo -h -n "$HOST" -o %t 2>/dev/null | head -n1) || return 1
    [[ "$state" == idle* || "$state" == mix* || "$state" == alloc* ]]
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return 0
    fi
    if [[ $(id -u) != 0 ]]; then
        log "slurmctld/slurmd/munged are missing and installing them needs root"; exit 3
    fi
    if ! command -v apt-get >/dev/null; then
        log "slurmctld/slurmd/munged are missing and there is no apt-get to install them"; exit 3
    fi
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 || { log "apt-get update failed"; exit 3; }
    apt-get install -y -q slurm-wlm munge >&2 || { log "apt-get install slurm-wlm munge failed"; exit 3; }
}

write_conf() {
    if [[ -f $CONF ]] && [[ "$(head -n1 "$CONF")" != "$MARKER" ]]; then
        log "$CONF exists and was not written by this script: refusing to replace it"; exit 4
    fi
    local cpus mem
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    # No cgroup.conf: Slurm 22.05 cannot disable the cgroup plugin, and without the file slurmd starts.
    cat > "$CONF" <<CONF
$MARKER
ClusterName=dfmdev
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# A requeued job may start again only after the credential lifetime (default 120 s).
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
JobRequeue=1
# A pending job is looked at every 2 s instead of every 60 s (requeues, dependencies).
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
KillWait=15
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=dev Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
}

start_munge() {
    if pgrep -x munged >/dev/null && munge -n | unmunge >/dev/null 2>&1; then return 0; fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chmod 400 /etc/munge/munge.key
    chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
    runuser -u munge -- /usr/sbin/munged
    munge -n | unmunge >/dev/null || { log "munge does not work (munge -n | unmunge failed)"; exit 5; }
}

up() {
    if node_ready; then return 0; fi
    install_packages
    write_conf
    start_munge
    pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
    pgrep -x slurmd >/dev/null || /usr/sbin/slurmd
    for _ in $(seq 60); do
        if node_ready; then log "node $HOST is up"; return 0; fi
        scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
        sleep 1
    done
    log "the node did not come up within 60 s; see /var/log/slurm/slurmctld.log and slurmd.log"
    sinfo >&2 || true
    exit 6
}

down() {
    for f in /run/slurmd.pid /run/slurmctld.pid; do
        if [[ -s $f ]]; then kill "$(cat "$f")" 2>/dev/null || true; fi
    done
}

case "${1:-up}" in
    up) up ;;
    down) down ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
