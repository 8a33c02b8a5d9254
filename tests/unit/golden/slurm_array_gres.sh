#!/bin/bash
#SBATCH --job-name=hpcb-square
#SBATCH --output=/scratch/alice/hpcb/0123456789abcdef/log/%a.out
#SBATCH --error=/scratch/alice/hpcb/0123456789abcdef/log/%a.err
#SBATCH --comment=hpcbridge:0123456789abcdef
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=1
#SBATCH --time=1-00:00:00
#SBATCH --gres=gpu:4
#SBATCH --partition=debug
#SBATCH --account=proj42
#SBATCH --qos=high
#SBATCH --array=0-199%16
#SBATCH --chdir=/
#SBATCH --constraint=a100
#SBATCH --exclusive
# hpcbridge 0.1.0: test_render.square, 200 calls
set -eo pipefail
module load gcc/12
module load cuda/12.4
export OMPI_MCA_btl=self,tcp
export WEIRD='a b'"'"'c $(touch /tmp/pwned) `id` "q"'
ulimit -c 0
export HPCBRIDGE_TASK="${SLURM_ARRAY_TASK_ID:-0}"
exec /opt/py/bin/python -u -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef
