#!/bin/bash
#PBS -N hpcb-square
#PBS -o /scratch/alice/hpcb/0123456789abcdef/log/pbs.out
#PBS -j oe
#PBS -l select=2:ncpus=4:mpiprocs=4:ngpus=4:mem=65536mb
#PBS -l place=scatter
#PBS -l walltime=24:00:00
#PBS -q gpu
#PBS -J 0-199%16
#PBS -r y
#PBS -W group_list=proj42
# hpcbridge 0.1.0: test_pbs_render.square, 200 calls
export HPCBRIDGE_TASK="${PBS_ARRAY_INDEX:-0}"
exec >>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".out 2>>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".err
if [ -z "${PBS_NODEFILE:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
    # Torque-compatible layers over Slurm set no PBS_NODEFILE: write one as PBS would (a line per rank slot)
    export PBS_NODEFILE=/scratch/alice/hpcb/0123456789abcdef/log/nodefile."$HPCBRIDGE_TASK"
    scontrol show hostnames "$SLURM_JOB_NODELIST" | awk '{ for (i = 0; i < 4; i++) print }' >"$PBS_NODEFILE"
fi
cd / || echo "hpcbridge: could not enter the submit directory; running in $PWD" >&2
set -eo pipefail
module load gcc/12
export OMPI_MCA_btl=self,tcp
export HPCBRIDGE_LAUNCHER=mpirun
export HPCBRIDGE_BIND_GPUS=4
exec /opt/py/bin/python -m hpcbridge.rendezvous /scratch/alice/hpcb/0123456789abcdef -- mpirun -np 8 --map-by ppr:4:node --hostfile '{nodefile}' /opt/py/bin/python -u -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef
