#!/bin/bash
#SBATCH --job-name=hpcb-square
#SBATCH --output=/scratch/alice/hpcb/0123456789abcdef/log/0.out
#SBATCH --error=/scratch/alice/hpcb/0123456789abcdef/log/0.err
#SBATCH --comment=hpcbridge:0123456789abcdef
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --time=00:10:00
#SBATCH --partition=debug
#SBATCH --chdir=/
#SBATCH --dependency=afterok:101:102_3
#SBATCH --kill-on-invalid-dep=yes
# hpcbridge 0.1.0: test_after.square, 1 call
set -eo pipefail
export HPCBRIDGE_TASK="${SLURM_ARRAY_TASK_ID:-0}"
exec /opt/py/bin/python -u -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef
