# JupyterHub on a Slurm cluster: every user's notebook server is a Slurm job on a compute node
# (batchspawner.SlurmSpawner), and hpcbridge is ready in its kernels. docs/jupyterhub.md explains each part.
#
# The values in the first block are the test cluster's (tests/cluster/hub runs exactly this file, with a few
# test-only settings on top); a centre replaces them with its own. Everything else is what a centre keeps.
#
# Roles of the machines:
#   - the hub and its proxy run on a login (or service) node, as an unprivileged user (here `jupyterhub`);
#   - the hub submits each user's server with `sudo -E -u USER sbatch` (batchspawner's default exec_prefix),
#     allowed by a sudoers rule (see docs/jupyterhub.md), so the job belongs to the user and counts against them;
#   - the server runs on a compute node and calls the hub back at HUB_CONNECT_IP, so that address must be
#     reachable from the compute nodes;
#   - the single-user server software (jupyterhub, batchspawner, jupyterlab) lives in HUB_ENV, and the kernel
#     users pick, "Python (hpcbridge)", is the site's Python with hpcbridge (KERNEL_PYTHON). Both are on a
#     filesystem every node mounts.
# JupyterHub provides `get_config` when it loads this file:
# ruff: noqa: F821

# --- site values -----------------------------------------------------------------------------------------------
#: the address compute nodes reach the hub's API at (the login node's address on the cluster network)
HUB_CONNECT_IP = "10.77.0.1"
#: where users connect (behind the centre's HTTPS reverse proxy in production)
PUBLIC_URL = "http://127.0.0.1:8000"
#: the environment with jupyterhub, batchspawner and jupyterlab, the same version on the nodes as on the hub
HUB_ENV = "/opt/hpcbridge-hub/venv"
#: the Slurm request of a notebook server
PARTITION = "debug"
RUNTIME = "00:30:00"
MEMORY = "1G"
CPUS = "1"
#: the site-config notebook users' hpcbridge picks without `site=`: the file lives in /etc/hpcbridge/sites/ on
#: every node (or in a shared directory named by HPCBRIDGE_SITES_PATH)
HPCBRIDGE_SITE = "testcluster"

c = get_config()

# --- the hub ---------------------------------------------------------------------------------------------------
c.JupyterHub.bind_url = PUBLIC_URL
# the hub's own API listens on the cluster network, for batchspawner-singleuser's call back from the node
c.JupyterHub.hub_bind_url = f"http://{HUB_CONNECT_IP}:8081"
c.JupyterHub.hub_connect_ip = HUB_CONNECT_IP
# a restarted hub keeps the users' servers (they are Slurm jobs with their own walltime)
c.JupyterHub.cleanup_servers = False

# --- the spawner: one Slurm job per server -----------------------------------------------------------------------
c.JupyterHub.spawner_class = "batchspawner.SlurmSpawner"
c.SlurmSpawner.req_partition = PARTITION
c.SlurmSpawner.req_runtime = RUNTIME
c.SlurmSpawner.req_memory = MEMORY
c.SlurmSpawner.req_nprocs = CPUS
# sudo replaces PATH with its secure_path, and sbatch passes that PATH to the job: the server's programs are named
# by absolute path
c.SlurmSpawner.batchspawner_singleuser_cmd = f"{HUB_ENV}/bin/batchspawner-singleuser"
c.Spawner.cmd = [f"{HUB_ENV}/bin/jupyterhub-singleuser"]
c.Spawner.default_url = "/lab"
# new notebooks use the site's Python with hpcbridge (the kernelspec "hpcbridge" in HUB_ENV/share/jupyter/kernels,
# whose argv is that Python; docs/jupyterhub.md), not the server environment's own python3
c.Spawner.args = ["--MappingKernelManager.default_kernel_name=hpcbridge"]
# a job may wait in the queue: give it time, and the server time to start on a busy node
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 120
# Variables every notebook server (and so every kernel and terminal) gets. hpcbridge reads HPCBRIDGE_SITE as its
# default site: a plain `Executor()` in a notebook submits there (it drops the JUPYTERHUB_* ones, the hub's API token
# among them, from what its jobs inherit). The job submits with
# --export=<these, the hub's JUPYTERHUB_* ones, USER, HOME, SHELL, PATH>.
c.Spawner.environment = {"HPCBRIDGE_SITE": HPCBRIDGE_SITE}
