#!/bin/bash
#LOCAL --array-size=5
#LOCAL --array=1
#LOCAL --parallel=3
#LOCAL --chdir=/
#LOCAL --job-name=debug-run
#LOCAL --cpus-per-task=2
#LOCAL --tasks-per-node=2
#LOCAL --walltime-s=5400
#LOCAL --mem-mb=1536
# hpcbridge 0.1.0: test_render.square, 5 calls
set -eo pipefail
export HPCBRIDGE_LAUNCHER=torchrun
export HPCBRIDGE_TASK="${HPCBRIDGE_TASK:-0}"
exec /opt/py/bin/python -m hpcbridge.rendezvous /w/0123456789abcdef -- /opt/py/bin/python -m torch.distributed.run --nnodes=1 --nproc-per-node=2 --rdzv-backend=c10d '--rdzv-endpoint={master_addr}:{master_port}' --rdzv-id=0123456789abcdef --max-restarts=0 -m hpcbridge.worker /w/0123456789abcdef
