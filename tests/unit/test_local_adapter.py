"""The local site's adapter: its status lines, and the resources it refuses (pure; tests/local runs the runner)."""

import pytest

from hpcbridge.errors import ResourceError
from hpcbridge.schedulers.base import ClusterFacts, Verdict
from hpcbridge.schedulers.local import LocalScheduler
from hpcbridge.spec import Resources
from hpcbridge.state import JobState
from hpcbridge.transport.base import Completed


def _parse(stdout):
    adapter = LocalScheduler("/py", "/w")
    query = adapter.status_query(["a1"], 0.0, 0.0, ClusterFacts())
    return adapter.parse_status(query, Completed(query.argv, 0, stdout, ""))


def test_status_lines_with_the_jobs_name_and_the_runners_own_ends():
    answer = _parse("a1_0|TIMEOUT|-15|debug-run\na1_1|OUT_OF_MEMORY|-9|debug-run\na1_2|COMPLETED|0|debug-run\n"
                    "a1_3|RUNNING||\n")
    assert answer.verdict is Verdict.ANSWERED
    got = {t: (s.state, s.native, s.exit_code) for t, s in answer.statuses.items()}
    assert got == {"a1_0": (JobState.TIMEOUT, "TIMEOUT", None), "a1_1": (JobState.OUT_OF_MEMORY, "OUT_OF_MEMORY", None),
                   "a1_2": (JobState.COMPLETED, "COMPLETED", 0), "a1_3": (JobState.RUNNING, "RUNNING", None)}


def test_status_lines_of_an_older_runner_without_the_name_still_parse():
    assert _parse("a1|FAILED|1\n").statuses["a1"].state is JobState.FAILED


def test_what_it_applies_passes_and_what_it_refuses_names_the_option():
    LocalScheduler.check_resources(Resources(walltime_s=60, mem_gb=1.0, cpus_per_task=2, tasks_per_node=2,
                                             name="x", launcher="torchrun", array_parallelism=2))
    with pytest.raises(ResourceError, match=r"^qos='high': the local site has no QOS; drop it"):
        LocalScheduler.check_resources(Resources(qos="high"))
