# Shared settings and helpers for tests/cluster/{up,down,client}. Sourced, not executed.
# The fixed names, paths and addresses below are the contract in docs/testcluster-contract.md.
# shellcheck shell=bash disable=SC2034

STATE=/var/lib/hpcbridge-testcluster
LOGDIR=$STATE/log
RUNDIR=$STATE/run
# environment modules: the project's modulefiles (tests/cluster/modulefiles) and the commands they put on PATH
MODULES_DIR=$STATE/modules
CLUSTER_NAME=testcluster
BRIDGE=hpcbr0
CTL_ADDR=10.77.0.1
CLUSTER_NET=10.77.0.0/24
CLIENT_NET=10.78.0.0/24
LOGIN_ADDR=10.77.0.5
LOGIN_CLIENT_ADDR=10.78.0.1
CLIENT_ADDR=10.78.0.2
# SSH transport tests (docs/ssh.md): a bastion (netns bastion) on the cluster bridge and on its own link to the
# client, for ProxyJump; a second port of the login sshd whose logins are noisy (~/.bashrc prints) and MaxSessions 10
BASTION_ADDR=10.77.0.6
BASTION_CLIENT_ADDR=10.79.0.1
CLIENT_BASTION_ADDR=10.79.0.2
NOISY_PORT=2222
# ... and a second sshd on the login node (its own PAM service, UsePAM yes) that wants a key AND a keyboard-interactive
# answer (AuthenticationMethods publickey,keyboard-interactive; PAM asks the user's password), for the MFA prompt test
MFA_PORT=2223
MFA_PAM_SERVICE=sshd-mfa-test
SSH_TEST_PASSPHRASE=hpcbridge-test-passphrase
NODES=(node1 node2 node3)
declare -A NODE_ADDR=([node1]=10.77.0.11 [node2]=10.77.0.12 [node3]=10.77.0.13)
TEST_USERS=(alice bob)
declare -A USER_UID=([alice]=2001 [bob]=2002)
USERS_GROUP=hpcusers
USERS_GID=2000
STAGE=/opt/hpcbridge-test
CLIENT_CMD=$STAGE/src/tests/cluster/client
CTL_CMD=$STAGE/src/tests/cluster/ctl
NETNS_DIR=/var/run/netns

say() { printf '[testcluster] %s\n' "$*"; }
warn() { printf '[testcluster] WARNING: %s\n' "$*" >&2; }
die() { printf '[testcluster] ERROR: %s\n' "$*" >&2; exit 1; }

require_root() {
    [[ $EUID -eq 0 ]] || die "$(basename "$0") must run as root"
}

# read_pid PIDFILE: print the pid stored in PIDFILE (fails when there is none)
read_pid() {
    local pid
    pid=$({ tr -dc '0-9' <"$1"; } 2>/dev/null) || return 1
    [[ -n $pid ]] && printf '%s\n' "$pid"
}

# proc_alive PID COMM: true when PID is a live (not zombie) process whose comm is COMM
proc_alive() {
    [[ $({ cat "/proc/$1/comm"; } 2>/dev/null) == "$2" ]] || return 1
    # a zombie (not yet reaped by pid 1) is not alive
    [[ $({ sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status"; } 2>/dev/null) != Z ]]
}

# pid_alive PIDFILE COMM: true when PIDFILE names a live process whose comm is COMM.
pid_alive() {
    local pid
    pid=$(read_pid "$1") || return 1
    proc_alive "$pid" "$2"
}

# stop_pidfile PIDFILE COMM [NAME]: SIGTERM, wait up to 10 s, then SIGKILL.
stop_pidfile() {
    local pidfile=$1 comm=$2 name=${3:-$2} pid i
    if pid=$(read_pid "$pidfile") && proc_alive "$pid" "$comm"; then
        say "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            proc_alive "$pid" "$comm" || break
            sleep 0.1
        done
        if proc_alive "$pid" "$comm"; then
            warn "$name did not stop in 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

# pids_by_cmdline ARGV...: pids of live processes whose full command line is exactly ARGV (how our own
# daemons are recognised when their pid file is gone, e.g. a slurmd left in a deleted namespace).
pids_by_cmdline() {
    local want f pid
    want=$(printf '%s\0' "$@" | od -An -tx1 | tr -d ' \n')
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        [[ $pid != "$$" ]] || continue
        if [[ $({ od -An -tx1 <"$f"; } 2>/dev/null | tr -d ' \n') == "$want" ]]; then
            proc_alive "$pid" "$(cat "/proc/$pid/comm" 2>/dev/null)" && printf '%s\n' "$pid"
        fi
    done
    return 0
}

# stop_stray NAME ARGV...: stop processes running exactly ARGV (see pids_by_cmdline)
stop_stray() {
    local name=$1 pid i
    shift
    for pid in $(pids_by_cmdline "$@"); do
        say "stopping stray $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            grep -qx "$pid" <<<"$(pids_by_cmdline "$@")" || break
            sleep 0.1
        done
        if grep -qx "$pid" <<<"$(pids_by_cmdline "$@")"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
}

wait_for() { # wait_for SECONDS CMD...: poll CMD (a command or a function) every 0.2 s until it succeeds
    local deadline=$((SECONDS + $1))
    shift
    while ((SECONDS < deadline)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    "$@" >/dev/null 2>&1
}

netns_exists() { [[ -e $NETNS_DIR/$1 ]] && grep -qw "^$1" <<<"$(ip netns list 2>/dev/null)"; }

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
