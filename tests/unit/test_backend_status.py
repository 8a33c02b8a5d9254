"""Status-query decisions of the backend, with a transport that replays recorded Slurm output (pure logic)."""

from hpcbridge.backend import Backend
from hpcbridge.sites import site_from_mapping
from hpcbridge.state import JobState
from hpcbridge.transport.base import Completed


class Replay:
    """Answers each command with the recorded output for its program."""

    name = "replay"

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def run(self, argv, **kw):
        self.calls.append(list(argv))
        code, out, err = self.answers[argv[0]]
        return Completed(list(argv), code, out, err)

    def expanduser(self, path):
        return path


def backend(answers):
    b = Backend(site_from_mapping("rec", {"scheduler": "slurm", "workdir": "/w", "accounting": True}))
    b.transport = Replay(answers)
    return b


def test_accounting_found_disabled_switches_to_squeue():
    b = backend({
        "sacct": (1, "", "sacct: error: Slurm accounting storage is disabled\n"),
        "squeue": (0, "12|RUNNING|None|node1\n", ""),
    })
    st = b.query_status(["12"], 0)
    assert st["12"].state == JobState.RUNNING
    assert [c[0] for c in b.transport.calls] == ["sacct", "squeue"]
    assert b.scheduler.accounting is False
    b.query_status(["12"], 0)
    assert [c[0] for c in b.transport.calls] == ["sacct", "squeue", "squeue"]  # decided once


def test_a_failed_query_is_reported_as_unknown_not_as_failed_jobs():
    b = backend({"sacct": (1, "", "sacct: error: Problem talking to the database: Connection refused\n")})
    assert b.query_status(["12"], 0) is None
    assert b.scheduler.accounting is True


def test_a_submission_the_controller_never_received_is_tried_again(monkeypatch):
    import hpcbridge.backend as backend_mod

    monkeypatch.setattr(backend_mod, "SUBMIT_RETRY_WAITS_S", (0.0, 0.0))
    answers = iter([
        (1, "", "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)\n"),
        (0, "77\n", ""),
    ])
    b = backend({})
    b.transport.run = lambda argv, **kw: Completed(list(argv), *next(answers))
    assert b.run_checked(["sbatch", "--parsable", "x.sh"], "submit the job").stdout == "77\n"


def test_an_ambiguous_submission_failure_is_not_retried(monkeypatch):
    import pytest

    from hpcbridge.errors import SchedulerError

    b = backend({"sbatch": (1, "", "sbatch: error: Batch job submission failed: Socket timed out on send/recv\n")})
    with pytest.raises(SchedulerError, match="Socket timed out"):
        b.run_checked(["sbatch", "--parsable", "x.sh"], "submit the job")
    assert len(b.transport.calls) == 1
