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
