#!/bin/bash
#SBATCH --job-name=hpcb-square
#SBATCH --output=/scratch/alice/hpcb/0123456789abcdef/log/0.out
#SBATCH --error=/scratch/alice/hpcb/0123456789abcdef/log/0.err
#SBATCH --comment=hpcbridge:0123456789abcdef
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=1
#SBATCH --time=01:00:00
#SBATCH --chdir=/
# hpcbridge 0.1.0: test_containers.square, 1 call
set -eo pipefail
export OMPI_MCA_btl=self,tcp
export MY_SETTING=1
export HPCBRIDGE_TASK="${SLURM_ARRAY_TASK_ID:-0}"
[ -e /sw ] || { printf 'hpcbridge: the container bind source %s does not exist on %s; bind paths that every node has\n' /sw "$(hostname)" >&2; exit 1; }
export USER="${USER:-$(id -un)}"
exec ch-run '--unset-env=!(CUDA_VISIBLE_DEVICES|HPCBRIDGE_*|MPI_LOCALNRANKS|MPI_LOCALRANKID|MY_SETTING|OMPI_*|PALS_*|PMI*|PRTE_*|ROCR_VISIBLE_DEVICES|SALLOC_*|SLURM_*|SRUN_*|TMPDIR)' --set-env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin -b /sw:/sw -b /scratch:/scratch --cd=/ /var/lib/images/worker -- python3 -u -m hpcbridge.worker /scratch/alice/hpcb/0123456789abcdef
