#!/bin/bash
#SBATCH --job-name=train
#SBATCH --output=/scratch/alice/hpcb/0123456789abcdef/log/0.out
#SBATCH --error=/scratch/alice/hpcb/0123456789abcdef/log/0.err
#SBATCH --comment=hpcbridge:0123456789abcdef
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=2048M
#SBATCH --time=00:10:00
#SBATCH --partition=debug
#SBATCH --chdir=/
# hpcbridge 0.1.0: test_render.square, 1 call
set -eo pipefail
module load gcc/12
module load cuda/12.4
export OMPI_MCA_btl=self,tcp
export WEIRD='a b'"'"'c $(touch /tmp/pwned) `id` "q"'
ulimit -c 0
export HPCBRIDGE_TASK="${SLURM_ARRAY_TASK_ID:-0}"
exec /opt/py/bin/python -u -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef
