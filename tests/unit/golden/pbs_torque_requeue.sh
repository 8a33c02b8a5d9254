#!/bin/bash
#PBS -N hpcb-square
#PBS -o /scratch/alice/hpcb/0123456789abcdef/log/pbs.out
#PBS -j oe
#PBS -l nodes=1:ppn=1
#PBS -l walltime=01:00:00
#PBS -r y
# hpcbridge 0.1.0: test_pbs_chain.square, 1 call
export HPCBRIDGE_TASK="${PBS_ARRAYID:-${SLURM_ARRAY_TASK_ID:-0}}"
exec >>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".out 2>>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".err
cd / || echo "hpcbridge: could not enter the submit directory; running in $PWD" >&2
set -eo pipefail
export HPCBRIDGE_REQUEUE=2
export HPCBRIDGE_SIGNAL_GRACE=120
export HPCBRIDGE_WARN_ON_TERM=1  # the server's SIGTERM reaches the worker too: it warns the call, not kill it
export HPCBRIDGE_RUN_START="$(date +%s.%N)"
hpcbridge_id="${PBS_JOBID:-${SLURM_JOB_ID:-}}"
hpcbridge_marker=/scratch/alice/hpcb/0123456789abcdef/ckpt/"$HPCBRIDGE_TASK".saved
hpcbridge_notes=/scratch/alice/hpcb/0123456789abcdef/ckpt/"$HPCBRIDGE_TASK".run
hpcbridge_cancelled=/scratch/alice/hpcb/0123456789abcdef/ckpt/cancelled
hpcbridge_run=0
while [ -e "$hpcbridge_notes$hpcbridge_run" ]; do hpcbridge_run=$(( hpcbridge_run + 1 )); done
export HPCBRIDGE_RESTART="$hpcbridge_run"
hpcbridge_note="$hpcbridge_notes$hpcbridge_run"
# a run that must not start. A rerun of a link that already handed over (the server requeued it after the SIGTERM
# that warned it: -r y): the newest note names another job, which continues the call; this rerun does nothing.
if [ "$hpcbridge_run" -gt 0 ]; then
    hpcbridge_prev="$(cut -d' ' -f4 < "$hpcbridge_notes$(( hpcbridge_run - 1 ))")"
    if [ "$hpcbridge_prev" != - ] && [ "${hpcbridge_prev%%.*}" != "${hpcbridge_id%%.*}" ]; then
        printf 'hpcbridge: job %s already continues as job %s: this rerun does nothing\n' "$hpcbridge_id" \
            "$hpcbridge_prev" >&2
        exit 0
    fi
fi
# A follow-up of a cancelled job (one the cancel could not reach): it notes CANCELLED and leaves.
if [ -e "$hpcbridge_cancelled" ]; then
    printf 'hpcbridge: run %s of job %s not started: the job was cancelled\n' "$(( hpcbridge_run + 1 ))" \
        "$hpcbridge_id" >&2
    printf 'CANCELLED - - - %s %s\n' "$(hostname)" "$HPCBRIDGE_RUN_START" > "$hpcbridge_note.tmp" \
        && mv -f "$hpcbridge_note.tmp" "$hpcbridge_note"
    exit 0
fi
export HPCBRIDGE_DEADLINE="$(( ${HPCBRIDGE_RUN_START%.*} + 3600 ))"
if [ "$hpcbridge_run" -gt 2 ]; then
    printf 'hpcbridge: run %s of job %s: restarted more often than requeue=%s allows\n' \
        "$hpcbridge_run" "$hpcbridge_id" 2 >&2
    exit 1
fi
hpcbridge_warned=""
hpcbridge_reason=SIGNALLED
hpcbridge_warn() {
    [ -z "$hpcbridge_warned" ] || return 0
    hpcbridge_warned="$(date +%s.%N)"
    kill -USR2 "$hpcbridge_child" 2>/dev/null || true
    local left=120
    [ -z "${HPCBRIDGE_DEADLINE:-}" ] || left=$(( HPCBRIDGE_DEADLINE - ${hpcbridge_warned%.*} ))
    # the timer's warning, or a signal near the walltime: TIMEOUT; a SIGTERM before it: PREEMPTED (or a qdel)
    if [ -n "${HPCBRIDGE_DEADLINE:-}" ] && [ "$left" -le $(( 120 + 2 )) ]; then
        hpcbridge_reason=TIMEOUT
    elif [ "$1" = TERM ]; then
        hpcbridge_reason=PREEMPTED
    fi
    # the command must leave before the end: what still runs 3 s before it is stopped
    (sleep "$(( left > 6 ? left - 3 : 3 ))"; kill -TERM "$hpcbridge_child" 2>/dev/null) &
}
trap 'hpcbridge_warn USR2' USR2
trap 'hpcbridge_warn TERM' TERM
(sleep 3480 & wait $!; kill -USR2 $$ 2>/dev/null) &
hpcbridge_timer=$!
/opt/py/bin/python -u -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef &
hpcbridge_child=$!
while :; do
    hpcbridge_rc=0
    wait "$hpcbridge_child" || hpcbridge_rc=$?
    kill -0 "$hpcbridge_child" 2>/dev/null || break
done
kill "$hpcbridge_timer" 2>/dev/null || true
# not warned, or the call finished (or failed with its result written) within the grace: the job ends here
if [ -z "$hpcbridge_warned" ] || [ "$hpcbridge_rc" -eq 0 ] || { [ "$hpcbridge_rc" -ne 75 ] && [ "$hpcbridge_rc" -lt 128 ]; }; then
    exit "$hpcbridge_rc"
fi
mkdir -p -m 700 /scratch/alice/hpcb/0123456789abcdef/ckpt
if [ -e "$hpcbridge_cancelled" ]; then
    hpcbridge_reason=CANCELLED  # the client marked it before its qdel (job.cancel(), hpcbridge cancel)
    printf 'hpcbridge: not requeued: the job was cancelled\n' >&2
elif [ "$hpcbridge_run" -lt 2 ] && { [ -e "$hpcbridge_marker" ] || false; }; then
    # the follow-up: this script again, after this job. Not from this job's environment: the scheduler's own
    # variables (a Slurm-backed qsub's sbatch reads SLURM_*/SBATCH_* as options) and this run's HPCBRIDGE_*
    hpcbridge_scrub=()
    for hpcbridge_var in $(compgen -e); do
        case "$hpcbridge_var" in
        SLURM_CONF|PBS_CONF_FILE|PBS_SERVER|PBS_DEFAULT) ;;  # where the scheduler is: the follow-up's too
        SLURM_*|SBATCH_*|SALLOC_*|SRUN_*|PBS_*|HPCBRIDGE_*) hpcbridge_scrub+=(-u "$hpcbridge_var") ;;
        esac
    done
    if hpcbridge_next="$(env "${hpcbridge_scrub[@]}" qsub -W "depend=afterany:$hpcbridge_id" -j oe -o /scratch/alice/hpcb/0123456789abcdef/log/pbs.out /scratch/alice/hpcb/0123456789abcdef/script.sh)" \
        && hpcbridge_next="$(printf '%s\n' "$hpcbridge_next" | sed -n '/[^[:space:]]/h; ${x;s/[[:space:]]//g;p}')" \
        && [ -n "$hpcbridge_next" ]; then
        printf '%s %s %s %s %s %s\n' "$hpcbridge_reason" "$hpcbridge_warned" "$(date +%s.%N)" "$hpcbridge_next" \
            "$(hostname)" "$HPCBRIDGE_RUN_START" > "$hpcbridge_note.tmp" && mv -f "$hpcbridge_note.tmp" "$hpcbridge_note"
        # a cancel that came while it was submitted: the client may have looked for the note before it was written
        if [ -e "$hpcbridge_cancelled" ]; then
            env "${hpcbridge_scrub[@]}" qdel "$hpcbridge_next" || true
        else
            printf 'hpcbridge: warned (%s): run %s continues as job %s (run %s)\n' "$hpcbridge_reason" \
                "$(( hpcbridge_run + 1 ))" "$hpcbridge_next" "$(( hpcbridge_run + 2 ))" >&2
        fi
        exit "$hpcbridge_rc"
    fi
    printf 'hpcbridge: could not submit the follow-up job of %s: %s\n' "$hpcbridge_id" \
        "${hpcbridge_next:-the submission printed no job id}" >&2
else
    printf 'hpcbridge: not requeued: %s\n' "$( [ "$hpcbridge_run" -ge 2 ] && echo "requeue=2 restarts used" || echo "no checkpoint saved and the call is not restartable")" >&2
fi
printf '%s %s - - %s %s\n' "$hpcbridge_reason" "$hpcbridge_warned" "$(hostname)" "$HPCBRIDGE_RUN_START" \
    > "$hpcbridge_note.tmp" && mv -f "$hpcbridge_note.tmp" "$hpcbridge_note"
exit "$hpcbridge_rc"
