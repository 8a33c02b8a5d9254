"""The worker (python -m hpcbridge.worker): the result file is named by task and rank, the folder is published."""

import os
import subprocess
import sys

import cloudpickle

from hpcbridge import store, worker


def _folder_of_env():
    import hpcbridge

    return hpcbridge.environment().folder


def test_the_worker_names_its_result_by_task_and_rank_and_tells_the_callable_its_folder(tmp_path):
    folder = store.JobFolder(str(tmp_path))
    os.makedirs(folder.results_dir)
    blobs = [cloudpickle.dumps([(pow, (2, 3), {})]), cloudpickle.dumps([(_folder_of_env, (), {})])]
    with open(folder.inputs, "wb") as fh:
        fh.write(store.pack_inputs(blobs))
    env = dict(os.environ, HPCBRIDGE_TASK="1", HPCBRIDGE_RANK="2", HPCBRIDGE_PORT_CLAIM_DIR=str(tmp_path / "claims"),
               PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-u", "-m", "hpcbridge.worker", str(tmp_path)], env=env, check=True, timeout=60)
    with open(folder.result(1, 2), "rb") as fh:
        payload = cloudpickle.load(fh)
    assert (payload["outcomes"], payload["rank"]) == ([("ok", str(tmp_path))], 2)


def test_the_worker_without_a_folder_says_how_to_start_it(capsys):
    assert worker.main([]) == 2
    assert "usage: python -m hpcbridge.worker FOLDER" in capsys.readouterr().err
