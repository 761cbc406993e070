#!/bin/bash
# A real one-node Slurm cluster on this machine for tests (Debian 12, root):
#   scripts/slurm-test-cluster.sh start   install slurm-wlm + munge if needed, write the munge key
#                                         and slurm.conf if absent, start munged, slurmctld and
#                                         slurmd if not running, wait until the node is idle
#   scripts/slurm-test-cluster.sh stop    stop the daemons this script started (by their pids)
# Idempotent: a running cluster is reused and left alone (daemons started before this script
# wrote its current slurm.conf keep their old settings until `stop` and `start`). Exit code 77 = skipped (not root).
# Facts behind the settings: ../shared/notes/slurm-single-node.md.
set -euo pipefail

STATE=${MAGSD_SLURM_STATE:-/tmp/magsd-slurm-test}
MARK="# magsd slurm-test-cluster.sh"

log() { echo "slurm-test-cluster: $*" >&2; }

# True when a live (not zombie) process of this exact name runs.
alive() {
    local p
    for p in $(pgrep -x "$1"); do
        case "$(ps -o stat= -p "$p" 2>/dev/null)" in Z*|"") ;; *) return 0 ;; esac
    done
    return 1
}

# Records the pid a daemon wrote to its pid file (after it has daemonised) as started by us.
record() {
    local name=$1 pidfile=$2
    for _ in $(seq 1 50); do
        if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            cp "$pidfile" "$STATE/$name.pid"
            return 0
        fi
        sleep 0.2
    done
    log "$name did not start (no live pid in $pidfile)"
    exit 1
}

if [ "$(id -u)" != 0 ]; then
    log "skipped: needs root (to install and start Slurm and munge)"
    exit 77
fi

start() {
    mkdir -p "$STATE"
    if ! command -v sbatch >/dev/null || ! command -v munged >/dev/null || ! command -v slurmd >/dev/null; then
        log "installing slurm-wlm and munge"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >&2
    fi
    local host cpus
    host=$(hostname -s)
    cpus=$(nproc)

    # munge: key and runtime folders owned by munge.
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "starting munged"
        su -s /bin/sh munge -c "munged"
        record munged /run/munge/munged.pid
        munge -n | unmunge | grep -q Success || { log "munge does not work"; exit 1; }
    fi

    # slurm.conf: written when absent (or ours); someone else's is used as it is.
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
    if [ ! -f /etc/slurm/slurm.conf ] || grep -q "$MARK" /etc/slurm/slurm.conf; then
        cat > /etc/slurm/slurm.conf <<EOF
$MARK (one node, CPU-only, for tests)
ClusterName=magsdtest
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
# A requeued job waits cred_expire seconds (default 120) before it may start again, and pending
# jobs are scheduled every sched_interval seconds (default 60): short, so a test requeues quickly.
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    else
        log "using the existing /etc/slurm/slurm.conf"
    fi

    if ! alive slurmctld; then
        log "starting slurmctld"
        slurmctld
        record slurmctld /run/slurmctld.pid
    fi
    if ! alive slurmd; then
        log "starting slurmd"
        slurmd
        record slurmd /run/slurmd.pid
    fi
    for _ in $(seq 1 60); do
        if sinfo -h -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
            log "node ready: $(sinfo -h -o '%N %T')"
            return 0
        fi
        sleep 1
    done
    log "the node did not become idle; sinfo: $(sinfo 2>&1 || true)"
    exit 1
}

stop() {
    # Only what this script started, by pid; slurmd before slurmctld before munged.
    for d in slurmd slurmctld munged; do
        local f="$STATE/$d.pid"
        if [ -s "$f" ]; then
            local pid
            pid=$(cat "$f")
            if kill "$pid" 2>/dev/null; then
                # Wait for it to exit, so that a `start` right after starts a new one.
                for _ in $(seq 1 100); do
                    kill -0 "$pid" 2>/dev/null || break
                    sleep 0.1
                done
                log "stopped $d ($pid)"
            fi
            rm -f "$f"
        fi
    done
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
