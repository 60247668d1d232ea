#!/bin/bash
# A real two-node Slurm cluster on this one machine, for trying sgsweep.sbatch and for the
# tests: munged, slurmctld and two slurmd (node1 at 127.0.0.1, node2 at 127.0.0.2, each
# with every CPU and one pretend GPU), all inside private network, PID, mount and hostname
# namespaces. Nothing listens outside them, ports cannot clash with anything else on the
# machine, and when the command ends every process started inside is gone.
#
#   deploy/slurm/local-cluster.sh install          # apt-get slurm-wlm + munge if missing
#   deploy/slurm/local-cluster.sh run DIR -- CMD   # start the cluster (files in DIR), run
#                                                  # CMD with SLURM_CONF set, tear down
#   deploy/slurm/local-cluster.sh shell DIR        # the same with an interactive shell
#
# Needs root (Debian's daemons, namespaces). Exit codes: CMD's; 2 for a usage mistake;
# 3 when this machine cannot have it (not root, no apt-get, no namespaces: the message
# says which); 1 when the daemons fail to start (their logs are in DIR).
set -uo pipefail

PACKAGES=(slurm-wlm munge)
DAEMONS=(munged slurmctld slurmd sbatch scancel squeue scontrol sinfo unshare ip)

say() { echo "local-cluster: $*" >&2; }
unavailable() { say "$*"; exit 3; }
fail() { say "$*"; exit 1; }

missing_daemons() {
    local name missing=()
    for name in "${DAEMONS[@]}"; do command -v "$name" >/dev/null || missing+=("$name"); done
    echo "${missing[*]}"
}

install() {
    [[ -z $(missing_daemons) ]] && return 0
    [[ $(id -u) == 0 ]] || unavailable "Slurm is not installed ($(missing_daemons) missing)" \
        "and installing it needs root: apt-get install ${PACKAGES[*]}"
    command -v apt-get >/dev/null || unavailable "Slurm is not installed and there is no apt-get"
    local apt=(apt-get -y -q -o DPkg::Lock::Timeout=300 install --no-install-recommends)
    say "installing ${PACKAGES[*]} with apt-get"
    # Debian's maintainer scripts must not start the daemons system-wide.
    export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
    if ! "${apt[@]}" "${PACKAGES[@]}" >/tmp/local-cluster-apt.$$ 2>&1; then
        apt-get -q -o DPkg::Lock::Timeout=300 update >>/tmp/local-cluster-apt.$$ 2>&1
        "${apt[@]}" "${PACKAGES[@]}" >>/tmp/local-cluster-apt.$$ 2>&1 || {
            tail -n 5 /tmp/local-cluster-apt.$$ >&2
            rm -f /tmp/local-cluster-apt.$$
            unavailable "apt-get install ${PACKAGES[*]} failed"
        }
    fi
    rm -f /tmp/local-cluster-apt.$$
    [[ -z $(missing_daemons) ]] || unavailable "still missing after install: $(missing_daemons)"
}

write_config() {
    local dir=$1 cpus
    cpus=$(nproc)
    mkdir -p "$dir/state" "$dir/spool/node1" "$dir/spool/node2"
    cat >"$dir/slurm.conf" <<EOF
ClusterName=sgsweep-local
SlurmctldHost=node1(127.0.0.1)
SlurmctldPort=6817
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd-%n.log
# No cgroups in a container: processes are tracked by parentage.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# A stopped job's steps get SIGKILL KillWait seconds after SIGTERM; finished jobs stay
# visible to scontrol for MinJobAge seconds.
KillWait=20
MinJobAge=600
SchedulerParameters=sched_interval=2
GresTypes=gpu
NodeName=node1 NodeAddr=127.0.0.1 Port=6818 CPUs=$cpus RealMemory=1000 Gres=gpu:1 State=UNKNOWN
NodeName=node2 NodeAddr=127.0.0.2 Port=6819 CPUs=$cpus RealMemory=1000 Gres=gpu:1 State=UNKNOWN
PartitionName=local Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP
EOF
    # A pretend GPU per node (a device file that exists everywhere): Slurm allocates it,
    # sets SLURM_GPUS_ON_NODE and CUDA_VISIBLE_DEVICES, and Ray counts it; nothing uses it.
    echo "NodeName=node[1-2] Name=gpu File=/dev/null" >"$dir/gres.conf"
}

stop_daemons() {
    local dir=$1 pidfile pid
    for pidfile in "$dir"/slurmd-node*.pid "$dir/slurmctld.pid" "$dir/munged.pid"; do
        [[ -f $pidfile ]] || continue
        pid=$(<"$pidfile")
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
    done
}

# Inside the namespaces (PID 1 of the new PID namespace): start, run, tear down.
inside() {
    local dir=$1
    shift
    ip link set lo up || fail "cannot bring up loopback in the network namespace"
    # glibc resolves numeric addresses with AI_ADDRCONFIG only when some address other
    # than 127.0.0.1 exists; node2's address is that.
    ip addr add 127.0.0.2/8 dev lo
    hostname node1
    write_config "$dir"
    export SLURM_CONF=$dir/slurm.conf
    head -c 1024 /dev/urandom >"$dir/munge.key"
    chmod 400 "$dir/munge.key"
    munged --force --socket="$dir/munge.socket" --key-file="$dir/munge.key" \
        --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" \
        --seed-file="$dir/munged.seed" 2>/dev/null || fail "munged did not start"
    slurmctld -i || fail "slurmctld did not start (see $dir/slurmctld.log)"
    # node2's slurmd (and so its jobs) gets a hostname of its own.
    slurmd -N node1 && unshare --uts bash -c 'hostname node2 && exec slurmd -N node2' ||
        fail "slurmd did not start (see $dir)"
    local state deadline=$((SECONDS + 60))
    until state=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u | tr '\n' ' ') &&
        [[ $state == "node1 idle node2 idle " ]]; do
        ((SECONDS < deadline)) || {
            tail -n 5 "$dir/slurmctld.log" >&2
            fail "nodes not idle after 60 s: ${state:-no answer from slurmctld}"
        }
        sleep 0.5
    done
    say "Slurm up: node1 (127.0.0.1) and node2 (127.0.0.2), SLURM_CONF=$SLURM_CONF"
    "$@"
    local rc=$?
    scancel --full --signal=KILL --state=RUNNING --user="$(id -un)" 2>/dev/null
    stop_daemons "$dir"
    exit "$rc"
}

usage() {
    sed -n '8,12p' "$0" >&2
    exit 2
}

case ${1:-} in
install)
    install
    ;;
run | shell)
    command=$1
    dir=${2:-}
    [[ -n $dir ]] || usage
    shift 2
    if [[ $command == run ]]; then
        [[ ${1:-} == -- ]] && shift
        (($#)) || usage
    else
        set -- "${SHELL:-bash}"
    fi
    if [[ -z ${SGSWEEP_LOCAL_SLURM_INSIDE:-} ]]; then
        install
        mkdir -p "$dir" && dir=$(cd "$dir" && pwd) || fail "cannot create $dir"
        unshare --net --pid --mount-proc --uts --fork true 2>/dev/null ||
            unavailable "cannot create network/PID namespaces here (unshare needs root)"
        # --kill-child: if this process is killed, the namespace's PID 1 and with it
        # every daemon inside go too.
        SGSWEEP_LOCAL_SLURM_INSIDE=1 exec unshare --net --pid --mount-proc --uts --fork \
            --kill-child "$0" "$command" "$dir" -- "$@"
    fi
    inside "$dir" "$@"
    ;;
*)
    usage
    ;;
esac
