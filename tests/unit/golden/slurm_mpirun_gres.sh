#!/bin/bash
#SBATCH --job-name=hpcb-train
#SBATCH --output=/scratch/alice/hpcb/0123456789abcdef/log/0.out
#SBATCH --error=/scratch/alice/hpcb/0123456789abcdef/log/0.err
#SBATCH --comment=hpcbridge:0123456789abcdef
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=2
#SBATCH --cpus-per-task=4
#SBATCH --time=01:00:00
#SBATCH --gres=gpu:2
#SBATCH --partition=gpu
#SBATCH --chdir=/
# hpcbridge 0.1.0: test_launchers.train, 1 call
set -eo pipefail
module load cuda/12.4
export OMPI_MCA_btl=self,tcp
export UCX_TLS=rc,sm
export HPCBRIDGE_LAUNCHER=mpirun
export HPCBRIDGE_BIND_GPUS=2
export HPCBRIDGE_TASK="${SLURM_ARRAY_TASK_ID:-0}"
exec /opt/py/bin/python -m hpcbridge.rendezvous /scratch/alice/hpcb/0123456789abcdef -- /opt/openmpi/bin/mpirun -np 6 --map-by ppr:2:node:PE=4 --bind-to core /opt/py/bin/python -u -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef
