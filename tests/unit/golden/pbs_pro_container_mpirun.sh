#!/bin/bash
#PBS -N hpcb-square
#PBS -o /scratch/alice/hpcb/0123456789abcdef/log/pbs.out
#PBS -j oe
#PBS -l select=2:ncpus=2:mpiprocs=2
#PBS -l place=scatter
#PBS -l walltime=01:00:00
# hpcbridge 0.1.0: test_containers.square, 1 call
export HPCBRIDGE_TASK="${PBS_ARRAY_INDEX:-0}"
exec >>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".out 2>>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".err
if [ -z "${PBS_NODEFILE:-}" ] && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
    # Torque-compatible layers over Slurm set no PBS_NODEFILE: write one as PBS would (a line per rank slot)
    export PBS_NODEFILE=/scratch/alice/hpcb/0123456789abcdef/log/nodefile."$HPCBRIDGE_TASK"
    scontrol show hostnames "$SLURM_JOB_NODELIST" | awk '{ for (i = 0; i < 2; i++) print }' >"$PBS_NODEFILE"
fi
cd / || echo "hpcbridge: could not enter the submit directory; running in $PWD" >&2
set -eo pipefail
export OMPI_MCA_btl=self,tcp
export MY_SETTING=1
export HPCBRIDGE_LAUNCHER=mpirun
exec /opt/py/bin/python -m hpcbridge.rendezvous /scratch/alice/hpcb/0123456789abcdef -- mpirun -np 4 --map-by ppr:2:node --hostfile '{nodefile}' apptainer exec --cleanenv --env-file /scratch/alice/hpcb/0123456789abcdef/container.env --bind /scratch/alice/hpcb/0123456789abcdef:/scratch/alice/hpcb/0123456789abcdef --pwd / /sw/containers/pytorch-24.05.sif python3 -u -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef
