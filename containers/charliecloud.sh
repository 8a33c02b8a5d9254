#!/usr/bin/env bash
# A Charliecloud worker image for hpcbridge jobs: a directory image built with debootstrap (no registry, no
# builder needed: Debian's charliecloud-runtime has none). Run as root where debootstrap is installed; the image
# can then live anywhere the compute nodes see (docs/containers.md):
#
#   sudo containers/charliecloud.sh /shared/images/hpcbridge-worker [HPCBRIDGE_SOURCE]
#
# What it holds: Debian 12 (minbase) with python3 (3.11: the clients' major.minor must be the same), Debian's
# python3-mpi4py and OpenMPI 4.1 with PMIx (for MPI jobs started by the host's srun --mpi=pmix or mpirun: the same
# OpenMPI as a Debian 12 host's; elsewhere build the host's version in the image), mount points for the cluster's
# filesystems and Charliecloud's /mnt/0-9 (ch-run cannot create a bind target in a read-only image), an empty
# /etc/hosts (ch-run binds the host's over it, so node names resolve), then cloudpickle (>= 3, from PyPI: Debian's
# python3-cloudpickle is 2.x) and hpcbridge (from HPCBRIDGE_SOURCE, a checkout or a wheel; else from PyPI).
#
# Environment: MIRROR (a Debian mirror, default deb.debian.org), PYTHON (a python 3.11 with pip, used to install
# the Python packages into the image; default python3), PACKAGES (more Debian packages, comma-separated),
# MOUNT_POINTS (default "/home /scratch /work /project /opt"), BASE_ONLY=1 (stop before cloudpickle and hpcbridge).
# With Charliecloud's builder (ch-image) use containers/Dockerfile instead.
set -euo pipefail

dest=${1:?usage: $0 DEST [HPCBRIDGE_SOURCE]}
source=${2:-hpcbridge}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PYTHON=${PYTHON:-python3}
MOUNT_POINTS=${MOUNT_POINTS:-/home /scratch /work /project /opt}
[[ $(id -u) == 0 ]] || { echo "$0: run as root (debootstrap)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "$0: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
[[ ! -e $dest ]] || { echo "$0: $dest exists; remove it or give another path" >&2; exit 2; }

include=python3,python3-mpi4py${PACKAGES:+,$PACKAGES}
debootstrap --variant=minbase --include="$include" bookworm "$dest" "$MIRROR"
for d in $MOUNT_POINTS /mnt/{0..9}; do install -d -m 755 "$dest$d"; done
[[ -e $dest/etc/hosts ]] || install -m 644 /dev/null "$dest/etc/hosts"
rm -rf "$dest"/var/cache/apt/archives/*.deb "$dest"/var/lib/apt/lists/* "$dest"/usr/share/doc/* "$dest"/usr/share/man/*
if [[ ${BASE_ONLY:-} != 1 ]]; then
    site=$dest/usr/local/lib/python3.11/dist-packages
    "$PYTHON" -m pip install --disable-pip-version-check -q --target "$site" --no-compile "cloudpickle>=3"
    "$PYTHON" -m pip install --disable-pip-version-check -q --target "$site" --no-compile --no-deps "$source"
fi
chmod 755 "$dest"
echo "$0: $dest ready ($(du -sh "$dest" | cut -f1)); run a job in it with container=\"$dest\" and" \
    "[container] runtime = \"charliecloud\""
