#!/bin/bash
#LOCAL --array-size=1
#LOCAL --array=0
#LOCAL --parallel=4
#LOCAL --chdir=/
#LOCAL --job-name=hpcb-square
#LOCAL --cpus-per-task=1
# hpcbridge 0.1.0: test_render.square, 1 call
set -eo pipefail
export HPCBRIDGE_TASK="${HPCBRIDGE_TASK:-0}"
exec /opt/py/bin/python -u -m hpcbridge.worker /w/0123456789abcdef
