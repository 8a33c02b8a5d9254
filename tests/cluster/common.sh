# Shared settings and helpers for tests/cluster/{up,down,client}. Sourced, not executed.
# The fixed names, paths and addresses below are the contract in docs/testcluster-contract.md.
# shellcheck shell=bash

STATE=/var/lib/hpcbridge-testcluster
LOGDIR=$STATE/log
RUNDIR=$STATE/run
CLUSTER_NAME=testcluster
BRIDGE=hpcbr0
CTL_ADDR=10.77.0.1
CLUSTER_NET=10.77.0.0/24
CLIENT_NET=10.78.0.0/24
LOGIN_ADDR=10.77.0.5
LOGIN_CLIENT_ADDR=10.78.0.1
CLIENT_ADDR=10.78.0.2
NODES=(node1 node2 node3)
declare -A NODE_ADDR=([node1]=10.77.0.11 [node2]=10.77.0.12 [node3]=10.77.0.13)
TEST_USERS=(alice bob)
declare -A USER_UID=([alice]=2001 [bob]=2002)
USERS_GROUP=hpcusers
USERS_GID=2000
STAGE=/opt/hpcbridge-test
CLIENT_CMD=$STAGE/src/tests/cluster/client
NETNS_DIR=/var/run/netns

say() { printf '[testcluster] %s\n' "$*"; }
warn() { printf '[testcluster] WARNING: %s\n' "$*" >&2; }
die() { printf '[testcluster] ERROR: %s\n' "$*" >&2; exit 1; }

require_root() {
    [[ $EUID -eq 0 ]] || die "$(basename "$0") must run as root"
}

# pid_alive PIDFILE COMM: true when PIDFILE names a live process whose comm is COMM.
pid_alive() {
    local pidfile=$1 comm=$2 pid
    [[ -r $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]]
}

# stop_pidfile PIDFILE COMM [NAME]: SIGTERM, wait up to 10 s, then SIGKILL.
stop_pidfile() {
    local pidfile=$1 comm=$2 name=${3:-$2} pid i
    if pid_alive "$pidfile" "$comm"; then
        pid=$(tr -dc '0-9' <"$pidfile")
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            [[ -d /proc/$pid ]] || break
            sleep 0.1
        done
        if [[ -d /proc/$pid ]]; then
            warn "$name did not stop in 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

netns_exists() { [[ -e $NETNS_DIR/$1 ]] && ip netns list 2>/dev/null | grep -qw "^$1"; }

# kill_netns_pids NS: kill every process whose network namespace is NS.
kill_netns_pids() {
    local ns=$1 pids i
    netns_exists "$ns" || return 0
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    [[ -n ${pids// /} ]] || return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
        [[ -n ${pids// /} ]] || return 0
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2
}
