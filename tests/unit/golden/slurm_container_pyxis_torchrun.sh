#!/bin/bash
#SBATCH --job-name=hpcb-square
#SBATCH --output=/scratch/alice/hpcb/0123456789abcdef/log/0.out
#SBATCH --error=/scratch/alice/hpcb/0123456789abcdef/log/0.err
#SBATCH --comment=hpcbridge:0123456789abcdef
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --gpus-per-node=8
#SBATCH --chdir=/
# hpcbridge 0.1.0: test_containers.square, 1 call
set -eo pipefail
export OMPI_MCA_btl=self,tcp
export MY_SETTING=1
export HPCBRIDGE_LAUNCHER=torchrun
export HPCBRIDGE_TASK="${SLURM_ARRAY_TASK_ID:-0}"
exec /opt/py/bin/python -m hpcbridge.rendezvous /scratch/alice/hpcb/0123456789abcdef -- srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=8 --kill-on-bad-exit=1 '--container-image=nvcr.io#nvidia/pytorch:24.05-py3' --container-mounts=/scratch/alice/hpcb/0123456789abcdef:/scratch/alice/hpcb/0123456789abcdef --container-workdir=/ python3 -m torch.distributed.run --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d '--rdzv-endpoint={master_addr}:{master_port}' --rdzv-id=0123456789abcdef --max-restarts=0 -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef
