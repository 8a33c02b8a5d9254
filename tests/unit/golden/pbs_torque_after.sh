#!/bin/bash
#PBS -N hpcb-square
#PBS -o /scratch/alice/hpcb/0123456789abcdef/log/pbs.out
#PBS -j oe
#PBS -l nodes=1:ppn=1
#PBS -l walltime=00:10:00
#PBS -W depend=afterok:101.srv:103,afterokarray:102[].srv
#SBATCH --kill-on-invalid-dep=yes
# hpcbridge 0.1.0: test_after.square, 1 call
export HPCBRIDGE_TASK="${PBS_ARRAYID:-${SLURM_ARRAY_TASK_ID:-0}}"
exec >>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".out 2>>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".err
cd / || echo "hpcbridge: could not enter the submit directory; running in $PWD" >&2
set -eo pipefail
exec /opt/py/bin/python -u -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef
