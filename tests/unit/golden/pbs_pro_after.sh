#!/bin/bash
#PBS -N hpcb-square
#PBS -o /scratch/alice/hpcb/0123456789abcdef/log/pbs.out
#PBS -j oe
#PBS -l select=1:ncpus=1:mpiprocs=1
#PBS -l walltime=00:10:00
#PBS -W depend=afterok:101.pbs01:102[].pbs01
# hpcbridge 0.1.0: test_after.square, 1 call
export HPCBRIDGE_TASK="${PBS_ARRAY_INDEX:-0}"
exec >>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".out 2>>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".err
cd / || echo "hpcbridge: could not enter the submit directory; running in $PWD" >&2
set -eo pipefail
exec /opt/py/bin/python -u -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef
