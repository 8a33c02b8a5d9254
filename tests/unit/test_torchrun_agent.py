"""hpcbridge.torchrun_agent's pure parts: the agent's children, and when the workers left to be requeued."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

from hpcbridge import torchrun_agent
from hpcbridge.launchers import torchrun_argv
from hpcbridge.spec import Resources
from hpcbridge.worker import EXIT_REQUEUE


def test_children_are_the_processes_this_one_started() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in torchrun_agent.children(os.getpid())
        assert os.getpid() not in torchrun_agent.children(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_the_workers_left_for_requeue_only_when_every_failed_one_exited_75() -> None:
    assert torchrun_agent.EXIT_REQUEUE == EXIT_REQUEUE

    def failed(*codes: int) -> Exception:
        exc = RuntimeError("ChildFailedError")
        exc.failures = {rank: SimpleNamespace(exitcode=code) for rank, code in enumerate(codes)}  # type: ignore[attr-defined]
        return exc

    assert torchrun_agent.left_for_requeue(failed(75, 75))
    assert not torchrun_agent.left_for_requeue(failed(75, 1))
    assert not torchrun_agent.left_for_requeue(failed())
    assert not torchrun_agent.left_for_requeue(ValueError("no failures"))


def test_with_requeue_on_the_agent_is_hpcbridge_s() -> None:
    on = torchrun_argv(Resources(nodes=2, tasks_per_node=1, requeue=1), python="py", rdzv_id="x")
    off = torchrun_argv(Resources(nodes=2, tasks_per_node=1), python="py", rdzv_id="x")
    assert on[:3] == ["py", "-m", "hpcbridge.torchrun_agent"] and off[:3] == ["py", "-m", "torch.distributed.run"]
    assert on[3:] == off[3:]
