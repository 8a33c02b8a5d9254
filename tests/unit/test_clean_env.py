"""What a submission from inside a job (a JupyterHub notebook server's) does not pass on to sbatch/qsub."""

from hpcbridge.backend import clean_env

NOTEBOOK_JOB = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/alice",
    "HPCBRIDGE_SITE": "testcluster",
    "SLURM_JOB_ID": "41",
    "SLURM_MEM_PER_NODE": "1024",
    "PMI_FD": "7",
    "JUPYTERHUB_API_TOKEN": "s3cret",
    "JPY_API_TOKEN": "s3cret",
    "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api",
    "JUPYTERHUB_USER": "alice",
    "JUPYTERHUB_SERVICE_PREFIX": "/user/alice/",
    "JUPYTER_CONFIG_DIR": "/home/alice/.jupyter",
}


def test_the_hubs_token_and_jupyterhub_variables_are_not_passed_to_a_child_job():
    env = clean_env(NOTEBOOK_JOB)
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/home/alice",
        "HPCBRIDGE_SITE": "testcluster",
        "JUPYTER_CONFIG_DIR": "/home/alice/.jupyter",  # Jupyter's own settings are not the hub's: kept
    }


def test_the_callers_environment_is_left_as_it_is():
    before = dict(NOTEBOOK_JOB)
    clean_env(NOTEBOOK_JOB)
    assert NOTEBOOK_JOB == before
