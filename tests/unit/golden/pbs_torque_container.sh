#!/bin/bash
#PBS -N hpcb-square
#PBS -o /scratch/alice/hpcb/0123456789abcdef/log/pbs.out
#PBS -j oe
#PBS -l nodes=1:ppn=1
#PBS -l walltime=01:00:00
# hpcbridge 0.1.0: test_containers.square, 1 call
export HPCBRIDGE_TASK="${PBS_ARRAYID:-${SLURM_ARRAY_TASK_ID:-0}}"
exec >>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".out 2>>/scratch/alice/hpcb/0123456789abcdef/log/"$HPCBRIDGE_TASK".err
cd / || echo "hpcbridge: could not enter the submit directory; running in $PWD" >&2
set -eo pipefail
export OMPI_MCA_btl=self,tcp
export MY_SETTING=1
export USER="${USER:-$(id -un)}"
exec ch-run '--unset-env=!(CUDA_VISIBLE_DEVICES|HPCBRIDGE_*|MPI_LOCALNRANKS|MPI_LOCALRANKID|MY_SETTING|OMPI_*|PALS_*|PBS_*|PMI*|PRTE_*|ROCR_VISIBLE_DEVICES|TMPDIR)' --set-env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin -b /scratch:/scratch --cd=/ /img -- python3 -u -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef
