#!/bin/bash
#SBATCH --job-name=hpcb-train
#SBATCH --output=/scratch/alice/hpcb/0123456789abcdef/log/0.out
#SBATCH --error=/scratch/alice/hpcb/0123456789abcdef/log/0.err
#SBATCH --comment=hpcbridge:0123456789abcdef
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=01:00:00
#SBATCH --gpus-per-node=4
#SBATCH --partition=gpu
#SBATCH --chdir=/
# hpcbridge 0.1.0: test_launchers.train, 1 call
set -eo pipefail
module load cuda/12.4
export OMPI_MCA_btl=self,tcp
export HPCBRIDGE_NCCL_ENV='{"NCCL_DEBUG":"WARN","NCCL_IB_HCA":"mlx5_0,mlx5_1","NCCL_SOCKET_IFNAME":"ib0"}'
export HPCBRIDGE_LAUNCHER=srun
export HPCBRIDGE_BIND_GPUS=4
export HPCBRIDGE_TASK="${SLURM_ARRAY_TASK_ID:-0}"
exec /opt/py/bin/python -m hpcbridge.rendezvous /scratch/alice/hpcb/0123456789abcdef -- srun --mpi=pmix --nodes=2 --ntasks=8 --ntasks-per-node=4 --cpus-per-task=8 --kill-on-bad-exit=1 /opt/py/bin/python -u -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef
