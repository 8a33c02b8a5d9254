#!/bin/bash
#PBS -N hpcb-square
#PBS -o /scratch/alice/hpcb/0123456789abcdef/log/pbs.out
#PBS -j oe
#PBS -l nodes=1:ppn=4
#PBS -l mem=512mb
#PBS -l walltime=00:10:00
#PBS -q batch
#PBS -t 0-9%4
# hpcbridge 0.1.0: test_pbs_render.square, 10 calls
export HPCBRIDGE_TASK="${PBS_ARRAYID:-${SLURM_ARRAY_TASK_ID:-0}}"
exec >>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".out 2>>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".err
if [ -z "${PBS_NODEFILE:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
    # Torque-compatible layers over Slurm set no PBS_NODEFILE: write one as PBS would (a line per rank slot)
    export PBS_NODEFILE=/scratch/alice/hpcb/0123456789abcdef/log/nodefile."$HPCBRIDGE_TASK"
    scontrol show hostnames "$SLURM_JOB_NODELIST" | awk '{ for (i = 0; i < 2; i++) print }' >"$PBS_NODEFILE"
fi
cd / || echo "hpcbridge: could not enter the submit directory; running in $PWD" >&2
set -eo pipefail
module load gcc/12
export OMPI_MCA_btl=self,tcp
export HPCBRIDGE_LAUNCHER=mpirun
exec /opt/py/bin/python -m hpcbridge.rendezvous /scratch/alice/hpcb/0123456789abcdef -- mpirun -np 2 --map-by ppr:2:node:PE=2 --hostfile '{nodefile}' /opt/py/bin/python -u -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef
