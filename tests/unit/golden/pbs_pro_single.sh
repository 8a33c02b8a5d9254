#!/bin/bash
#PBS -N train
#PBS -o /scratch/alice/hpcb/0123456789abcdef/log/pbs.out
#PBS -j oe
#PBS -l select=1:ncpus=4:mpiprocs=1:mem=2048mb
#PBS -l walltime=00:10:00
#PBS -q workq
#PBS -A proj42
# hpcbridge 0.1.0: test_pbs_render.square, 1 call
export HPCBRIDGE_TASK="${PBS_ARRAY_INDEX:-0}"
exec >>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".out 2>>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".err
cd / || echo "hpcbridge: could not enter the submit directory; running in $PWD" >&2
set -eo pipefail
module load gcc/12
export OMPI_MCA_btl=self,tcp
exec /opt/py/bin/python -u -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef
