#!/bin/bash
#SBATCH --job-name=hpcb-square
#SBATCH --output=/scratch/alice/hpcb/0123456789abcdef/log/0.out
#SBATCH --error=/scratch/alice/hpcb/0123456789abcdef/log/0.err
#SBATCH --comment=hpcbridge:0123456789abcdef
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --gpus-per-node=4
#SBATCH --chdir=/
# hpcbridge 0.1.0: test_containers.square, 1 call
set -eo pipefail
export OMPI_MCA_btl=self,tcp
export MY_SETTING=1
export HPCBRIDGE_NCCL_ENV='{"NCCL_SOCKET_IFNAME":"ib0"}'
export HPCBRIDGE_LAUNCHER=srun
export HPCBRIDGE_BIND_GPUS=4
export HPCBRIDGE_TASK="${SLURM_ARRAY_TASK_ID:-0}"
[ -e /sw ] || { printf 'hpcbridge: the container bind source %s does not exist on %s; bind paths that every node has\n' /sw "$(hostname)" >&2; exit 1; }
[ -e /data ] || { printf 'hpcbridge: the container bind source %s does not exist on %s; bind paths that every node has\n' /data "$(hostname)" >&2; exit 1; }
exec /opt/py/bin/python -m hpcbridge.rendezvous /scratch/alice/hpcb/0123456789abcdef -- srun --mpi=pmix --nodes=2 --ntasks=8 --ntasks-per-node=4 --cpus-per-task=1 --kill-on-bad-exit=1 apptainer exec --cleanenv --env-file /scratch/alice/hpcb/0123456789abcdef/container.env --nv --bind /sw:/sw --bind /data:/data:ro --bind /scratch/alice/hpcb/0123456789abcdef:/scratch/alice/hpcb/0123456789abcdef --pwd / /sw/containers/pytorch-24.05.sif python3 -u -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef
