"""The PBS adapter's parsers and argv, on output written from the PBS Pro / Torque documentation and recorded from
the slurm-wlm-torque wrappers of the live test cluster (tests/unit/fixtures/pbs/README.md says which is which)."""

from __future__ import annotations

import json
import os
import re

import pytest

from hpcbridge import submit_once
from hpcbridge.backend import Backend
from hpcbridge.errors import ConnectionLostError, ResourceError, SchedulerError, TransportError
from hpcbridge.schedulers import scheduler_for
from hpcbridge.schedulers.base import ClusterFacts, ScriptRequest, StatusAnswer, Verdict
from hpcbridge.schedulers.pbs import PBSScheduler
from hpcbridge.schedulers.pbs.qstat import expand_range, parse_qstat_json, parse_qstat_text
from hpcbridge.sites import site_from_mapping
from hpcbridge.spec import Resources, resources_from
from hpcbridge.state import JobState
from hpcbridge.testing import ScriptedTransport
from hpcbridge.transport.base import Completed

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pbs")


def fixture(name: str) -> str:
    """The fixture's output, without its provenance header (the leading '#' lines)."""
    with open(os.path.join(FIXTURES, name)) as fh:
        lines = fh.read().splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


def parse(adapter: PBSScheduler, stdout: str, ids=(), code=0, stderr="", arrays=None, facts=None) -> StatusAnswer:
    """The adapter's answer to qstat's output for the query of ``ids`` (``arrays``: the array ones and their sizes;
    ``facts``: what earlier answers taught)."""
    query = adapter.status_query(list(ids), 0, 0, facts or ClusterFacts(), arrays)
    return adapter.parse_status(query, Completed(query.argv, code, stdout, stderr))


def status_argv(adapter: PBSScheduler, ids, arrays=None):
    return adapter.status_query(ids, 0, 0, ClusterFacts(), arrays).argv


def missing(adapter: PBSScheduler, statuses, task_id: str):
    """The adapter's news of ``task_id``, which a successful answer (``statuses``) did not list, or None."""
    return adapter.missing_statuses(statuses, [task_id]).get(task_id)


@pytest.fixture
def pro() -> PBSScheduler:
    return PBSScheduler("pbspro")


@pytest.fixture
def torque() -> PBSScheduler:
    return PBSScheduler("torque")


# -- qsub -----------------------------------------------------------------------------------------------------
def test_parse_submit_reads_the_id_qsub_prints(pro, torque):
    lines = fixture("pbspro_qsub.txt").splitlines()
    assert pro.parse_submit(lines[0] + "\n") == "1234.pbs-server"
    assert pro.parse_submit("\n".join(lines[1:]) + "\n") == "1235[].pbs-server.example.org"
    assert torque.parse_submit("46\n") == "46"  # slurm-wlm-torque prints Slurm's plain id, arrays included
    with pytest.raises(SchedulerError, match="qsub printed no job id: 'qsub: Unknown queue'"):
        pro.parse_submit("qsub: Unknown queue\n")


def test_submit_argv_puts_the_scheduler_log_on_the_command_line(pro, torque):
    # the slurm-wlm-torque qsub overrides #PBS -o/-j with defaults in the caller's current directory; PBS Pro's
    # qsub runs in the foreground (-f: no background daemon holding an SSH channel's stdout open)
    assert pro.submit_argv("/home/a/.hpcbridge/jobs/0123/script.sh") == [
        "qsub", "-f", "-j", "oe", "-o", "/home/a/.hpcbridge/jobs/0123/log/pbs.out",
        "/home/a/.hpcbridge/jobs/0123/script.sh",
    ]
    assert torque.submit_argv("/home/a/.hpcbridge/jobs/0123/script.sh") == [  # Torque's -f is "fault tolerant"
        "qsub", "-j", "oe", "-o", "/home/a/.hpcbridge/jobs/0123/log/pbs.out", "/home/a/.hpcbridge/jobs/0123/script.sh"
    ]


def test_task_ids(pro, torque):
    assert pro.task_id("1235[].pbs-server", 4, True) == "1235[4].pbs-server"
    assert pro.task_id("1236.pbs-server", 0, True) == "1236.pbs-server"  # a one-task array goes as a plain job
    assert pro.task_id("1237.pbs-server", 0, False) == "1237.pbs-server"
    assert torque.task_id("1300[].torque-server", 2, True) == "1300[2].torque-server"
    assert torque.task_id("46", 3, True) == "46[3]"  # a bare array of the Slurm-backed wrapper


# -- PBS Pro: qstat -f -F json -x -t ---------------------------------------------------------------------------
PRO_EXPECTED = {
    "1001.pbs-server": (JobState.COMPLETED, 0, "F Exit_status=0"),
    "1002.pbs-server": (JobState.FAILED, 1, "F Exit_status=1"),
    "1003.pbs-server": (JobState.TIMEOUT, -29, "F Exit_status=-29 JOB_EXEC_KILL_WALLTIME"),
    "1004.pbs-server": (JobState.OUT_OF_MEMORY, -27, "F Exit_status=-27 JOB_EXEC_KILL_MEM"),
    "1005.pbs-server": (JobState.CANCELLED, 271, "F Exit_status=271 (deleted)"),
    "1006.pbs-server": (JobState.CANCELLED, None, "F (deleted)"),
    "1007.pbs-server": (
        JobState.TIMEOUT, 271,
        "F Exit_status=271 (killed by signal 15 (SIGTERM): walltime 602 s reached the limit 600 s)",
    ),
    "1008.pbs-server": (JobState.FAILED, 265, "F Exit_status=265 (killed by signal 9 (SIGKILL))"),
    "1009.pbs-server": (JobState.NODE_FAIL, -20, "F Exit_status=-20 JOB_EXEC_RERUN_MS_FAIL"),
    "1010.pbs-server": (JobState.RUNNING, None, "R"),
    "1011.pbs-server": (JobState.PENDING, None, "Q"),
    "1012.pbs-server": (JobState.PENDING, None, "H"),
    "1013.pbs-server": (JobState.PENDING, None, "W"),
    "1014.pbs-server": (JobState.RUNNING, None, "S"),
    "1015.pbs-server": (JobState.RUNNING, None, "E"),
    "1016.pbs-server": (JobState.PENDING, None, "T"),
    "1020[].pbs-server": (JobState.RUNNING, None, "B"),
    "1020[0].pbs-server": (JobState.COMPLETED, 0, "X Exit_status=0"),
    "1020[1].pbs-server": (JobState.FAILED, 1, "X Exit_status=1"),
    "1020[2].pbs-server": (JobState.RUNNING, None, "R"),
    "1020[3].pbs-server": (JobState.RUNNING, None, "E"),
    "1020[4].pbs-server": (JobState.PENDING, None, "Q"),
    "1020[5].pbs-server": (JobState.PENDING, None, "Q (subjob not started)"),  # listed only in its parent's range
    "1030[0].pbs-server": (JobState.COMPLETED, 0, "X Exit_status=0"),
    "1030[1].pbs-server": (JobState.COMPLETED, 0, "X Exit_status=0"),
}


def test_pbspro_json_states_and_exit_statuses(pro):
    statuses = parse(pro, fixture("pbspro_qstat_json.txt")).statuses
    got = {k: (v.state, v.exit_code, v.native) for k, v in statuses.items() if k in PRO_EXPECTED}
    assert got == PRO_EXPECTED
    assert statuses["1010.pbs-server"].nodes == "node01/0*4+node02/0*4"
    assert statuses["1011.pbs-server"].reason.startswith("Not Running: Insufficient amount of resource: ncpus")


def test_pbspro_json_is_flattened_with_nested_resources():
    jobs = parse_qstat_json(fixture("pbspro_qstat_json.txt"))
    assert jobs["1007.pbs-server"]["resources_used.walltime"] == "00:10:02"
    assert jobs["1007.pbs-server"]["Resource_List.walltime"] == "00:10:00"
    assert jobs["1010.pbs-server"]["Resource_List.select"] == "2:ncpus=4:mpiprocs=4:ngpus=1:mem=2048mb"
    assert jobs["1020[].pbs-server"]["array"] == "True"
    assert parse_qstat_json("") == {}
    # no Jobs key: qstat found none of the ids (it also says so on stderr)
    assert parse_qstat_json('{"timestamp":1,"pbs_version":"2022.1.1","pbs_server":"s"}') == {}


def test_pbspro_invalid_json_is_read_line_by_line(pro):
    text = fixture("pbspro_qstat_json_invalid.txt")
    with pytest.raises(ValueError):
        json.loads(text, strict=False)  # what openpbs#2541 reports: json.loads gives up
    statuses = parse(pro, text).statuses
    assert {k: (v.state, v.exit_code) for k, v in statuses.items()} == {
        "2001.pbs-server": (JobState.COMPLETED, 0),
        "2002.pbs-server": (JobState.TIMEOUT, -29),
    }
    jobs = parse_qstat_json(text)
    assert jobs["2002.pbs-server"]["resources_used.walltime"] == "00:10:01"
    assert jobs["2001.pbs-server"]["Variable_List.LEVEL"] == "005"


def test_pbspro_status_is_one_query_with_history_and_subjobs(pro):
    argv = status_argv(pro, ["1001.pbs-server", "1020[].pbs-server"], {"1020[].pbs-server": 6})
    assert argv == ["qstat", "-f", "-F", "json", "-x", "-t", "1001.pbs-server", "1020[].pbs-server"]


# -- Torque: qstat -f (text) ----------------------------------------------------------------------------------
def test_torque_text_states_and_exit_statuses(torque):
    statuses = parse(torque, fixture("torque_qstat_f.txt")).statuses
    got = {k: (v.state, v.exit_code, v.native) for k, v in statuses.items()}
    assert got == {
        "1299.torque-server": (JobState.COMPLETED, 0, "C Exit_status=0"),
        "1300[0].torque-server": (JobState.COMPLETED, 0, "C Exit_status=0"),
        "1300[1].torque-server": (JobState.FAILED, 2, "C Exit_status=2"),
        "1300[2].torque-server": (JobState.RUNNING, None, "R"),
        "1301.torque-server": (JobState.TIMEOUT, -11, "C Exit_status=-11 JOB_EXEC_OVERLIMIT_WT"),
        "1302.torque-server": (JobState.CANCELLED, 271, "C Exit_status=271 (killed by signal 15 (SIGTERM))"),
        "1303.torque-server": (
            JobState.TIMEOUT, 271, "C Exit_status=271 (killed by signal 15 (SIGTERM): walltime 600 s reached the "
            "limit 600 s)"
        ),
        "1304.torque-server": (JobState.RUNNING, None, "R"),
        "1305.torque-server": (JobState.PENDING, None, "Q"),
        "1306.torque-server": (JobState.PENDING, None, "H"),
    }
    assert statuses["1304.torque-server"].nodes == "node01/0+node01/1+node02/0+node02/1"


def test_torque_text_joins_wrapped_values():
    jobs = parse_qstat_text(fixture("torque_qstat_f.txt"))
    env = jobs["1299.torque-server"]["Variable_List"]
    assert env.startswith("PBS_O_QUEUE=batch,") and env.endswith("PBS_O_HOST=login01,PBS_O_SERVER=torque-server")
    assert "PBS_O_PATH=/usr/local/bin:/usr/bin:/bin," in env


def test_torque_status_argv(torque):
    assert status_argv(torque, ["1299.torque-server"]) == ["qstat", "-f", "1299.torque-server"]
    assert status_argv(torque, ["1299.torque-server", "1300[].torque-server"]) == [
        "qstat", "-f", "-t", "1299.torque-server", "1300[].torque-server"
    ]


# -- jobs that left qstat -------------------------------------------------------------------------------------
def test_a_job_qstat_no_longer_lists_has_ended(torque, pro):
    statuses = parse(torque, fixture("torque_qstat_f.txt")).statuses
    gone = missing(torque, statuses, "1298.torque-server")
    assert gone is not None and gone.state == JobState.COMPLETED and gone.exit_code is None
    assert gone.native == "gone from qstat (it finished; its exit status is no longer kept)"
    # a subjob Torque has not made yet, while others of its array are listed: no news, not "gone"
    assert missing(torque, statuses, "1300[3].torque-server") is None
    # once nothing of the array is listed any more, its unlisted subjobs have ended
    statuses = parse(torque, fixture("torque_qstat_f.txt").split("Job Id: 1300[0]")[0]).statuses
    assert missing(torque, statuses, "1300[3].torque-server") is not None
    assert missing(pro, {}, "1040.pbs-server") is not None


def test_qstat_exit_status_for_unknown_jobs_is_an_answer(pro, torque):
    assert pro.status_exit_ok(153, "qstat: Unknown Job Id 1299.pbs-server\n")
    assert pro.status_exit_ok(35, "qstat: 1299.pbs-server Job has finished, use -x or -H to obtain historical job "
                                  "information\n")
    assert torque.status_exit_ok(153, "qstat: Unknown Job Id Error 1299.torque-server\n")
    assert torque.status_exit_ok(153, "")  # slurm-wlm-torque: none of the ids known, and it says nothing
    assert not pro.status_exit_ok(15010 & 0xFF, "qstat: cannot connect to server pbs-server (errno=111)\n")
    assert not pro.status_exit_ok(153, "qstat: Unknown Job Id 1.s\nqstat: cannot connect to server s\n")
    assert not torque.status_exit_ok(2, "")


def test_an_empty_answer_is_gone_jobs_only_when_qstat_said_they_are_unknown(pro, torque):
    with pytest.raises(SchedulerError, match="qstat reported no job and no error"):
        parse(torque, "", ["1299.torque-server"])  # exit 0 and nothing: broken, retried; not "every job has ended"
    assert torque.status_exit_ok(153, "") and parse(torque, "", ["46"], code=153).statuses == {}
    unknown = "qstat: Unknown Job Id 1299.pbs-server\n"
    assert pro.status_exit_ok(153, unknown) and parse(pro, "", ["1299.pbs-server"], 153, unknown).statuses == {}
    # any other failure: asked again later, nothing is marked
    failed = parse(pro, "", ["1299.pbs-server"], 2, "qstat: cannot connect to server pbs-server (errno=111)\n")
    assert failed.verdict is Verdict.RETRY and failed.statuses == {}


# -- accounting: whether a PBS Pro server keeps job history ----------------------------------------------------
PBS_IDS = ["1001.pbs-server", "1020[].pbs-server"]
GONE_FROM_QSTAT = "qstat: Unknown Job Id 1001.pbs-server\nqstat: Unknown Job Id 1020[].pbs-server\n"


@pytest.mark.parametrize(("accounting", "history"), [(True, ["-x"]), (False, [])])
def test_pbspro_asks_for_finished_jobs_only_where_the_site_keeps_job_history(accounting, history):
    site = site_from_mapping("p", {"scheduler": "pbs", "flavour": "pbspro", "workdir": "/w", "accounting": accounting})
    t = ScriptedTransport(answers={"qstat": (153, "", GONE_FROM_QSTAT)})
    b = Backend(site, transport=t)
    assert b.facts.accounting is accounting
    statuses = b.query_status(PBS_IDS, 0, {"1020[].pbs-server": 2})
    assert t.calls == [["qstat", "-f", "-F", "json", *history, "-t", *PBS_IDS]]
    assert b.scheduler.find_by_tag_argv("aaaa") == ["qstat", "-f", "-F", "json", *history]
    # without history a finished job leaves qstat: it is over, with its exit status unknown (its result file decides)
    assert statuses == {}
    tasks = ["1001.pbs-server", "1020[0].pbs-server", "1020[1].pbs-server"]
    gone = b.scheduler.missing_statuses(statuses, tasks)
    assert {k: (v.state, v.exit_code, v.native) for k, v in gone.items()} == {
        task: (JobState.COMPLETED, None, "gone from qstat (it finished; its exit status is no longer kept)")
        for task in tasks
    }


@pytest.mark.parametrize("accounting", [True, False])
def test_torque_queries_are_the_same_whatever_the_site_says_of_accounting(accounting):
    site = site_from_mapping("t", {"scheduler": "pbs", "flavour": "torque", "workdir": "/w", "accounting": accounting})
    t = ScriptedTransport(answers={"qstat": (0, fixture("torque_qstat_f.txt"), "")})
    b = Backend(site, transport=t)
    b.query_status(["1299.torque-server"], 0)
    b.query_status(["1299.torque-server", "1300[].torque-server"], 0, {"1300[].torque-server": 3})
    b.query_status(["46"], 0, {"46": 3})  # a bare array of the Slurm-backed wrappers
    assert t.calls == [
        ["qstat", "-f", "1299.torque-server"],
        ["qstat", "-f", "-t", "1299.torque-server", "1300[].torque-server"],
        ["qstat", "-f"],
    ]
    assert b.scheduler.find_by_tag_argv("aaaa") == ["qstat", "-f"]


# -- the Slurm-backed wrapper's arrays ----------------------------------------------------------------------
WRAPPER_IDS = ["749", "750"]


def _bare(torque: PBSScheduler, text: str, facts=None) -> StatusAnswer:
    """One poll of the wrapper's array 749 (200 tasks, a plain id) and job 750: qstat's answer read for it."""
    return parse(torque, text, WRAPPER_IDS, arrays={"749": 200}, facts=facts)


def _set_state(text: str, job_id: str, state: str) -> str:
    return re.sub(rf"(Job Id:\t{job_id}\n(?:\t.*\n)*?\tjob_state = )\S", rf"\g<1>{state}", text)


def _drop(text: str, job_id: str) -> str:
    return re.sub(rf"Job Id:\t{job_id}\n(?:\t.*\n)*\n?", "", text)


def test_bare_array_tasks_follow_their_group(torque):
    # its started tasks have ids nobody told us: ask for every job
    assert status_argv(torque, WRAPPER_IDS, {"749": 200}) == ["qstat", "-f"]
    text = fixture("slurm_torque_qstat_f.txt")
    statuses = _bare(torque, text).statuses
    assert statuses["749[0]"].state == JobState.RUNNING and statuses["749[199]"].state == JobState.RUNNING
    assert statuses["749[7]"].native == "R (array 749: 2 running, 1 queued)"  # 944, 945 run; 749 holds the rest
    assert statuses["750"].state == JobState.PENDING
    assert missing(torque, statuses, "749[7]") is None  # never guessed: only the group speaks for these


def test_bare_array_is_not_over_while_a_task_runs_after_its_own_record_ended(torque):
    text = _set_state(_set_state(fixture("slurm_torque_qstat_f.txt"), "749", "C"), "944", "C")
    first = _bare(torque, text)
    assert first.statuses["749[3]"].native == "R (array 749: 1 running, 0 queued)"
    # Slurm purges 749 300 s after it ended; 945 still runs and still belongs to the array (the key its own record
    # showed is a fact the first answer taught, handed back with the next query)
    assert _bare(torque, _drop(text, "749"), first.facts).statuses["749[3]"].state == JobState.RUNNING


def test_bare_array_ends_when_all_its_tasks_have(torque):
    text = fixture("slurm_torque_qstat_f.txt")
    for job_id in ("749", "944", "945"):
        text = _set_state(text, job_id, "C")
    first = _bare(torque, text)
    status = first.statuses["749[12]"]
    # 824 (queued, same name, submitted later) is not part of it: else this would still be PENDING
    assert status.state == JobState.COMPLETED and status.exit_code is None
    assert status.native == "C (every task of array 749 has ended; exit status not reported)"
    for job_id in ("749", "757", "758", "943", "944", "945"):
        text = _drop(text, job_id)
    assert _bare(torque, text, first.facts).statuses["749[12]"].state == JobState.COMPLETED  # all purged


def test_bare_array_tasks_cannot_be_cancelled_alone(torque):
    assert torque.cancel_argv(["749"]) == ["qdel", "749"]  # the whole array
    with pytest.raises(SchedulerError) as info:
        torque.cancel_argv(["749[1]", "749[2]"])
    assert str(info.value).startswith(
        "cannot cancel 749[1], 749[2] on its own: this site's qsub printed the plain id 749 for the array, so its "
        "qdel knows only the whole array (qdel 749[1] would cancel every task)."
    )


def test_cancel_argv(pro):
    assert pro.cancel_argv(["1020[3].pbs-server", "1001.pbs-server"]) == [
        "qdel", "1020[3].pbs-server", "1001.pbs-server"
    ]


# -- directives and their validation ---------------------------------------------------------------------------
def _req(res: Resources, folder: str = "/home/a/jobs/0123", n=None) -> ScriptRequest:
    return ScriptRequest(res, folder, "hpcb-f", "0123", n)


def test_pbspro_select_syntax(pro):
    res = resources_from(Resources(), dict(nodes=3, tasks_per_node=2, cpus_per_task=4, gpus_per_node=1, mem_gb=8,
                                            walltime="1-02:00:00", partition="gpu", account="p1"))
    assert pro.directives(_req(res)) == [
        "-N hpcb-f", "-o /home/a/jobs/0123/log/pbs.out", "-j oe",
        "-l select=3:ncpus=8:mpiprocs=2:ngpus=1:mem=8192mb", "-l place=scatter", "-l walltime=26:00:00",
        "-q gpu", "-A p1",
    ]


def test_pbspro_one_task_array_is_a_plain_job(pro):
    assert not any(d.startswith("-J") for d in pro.directives(_req(Resources(), n=1)))
    assert "-J 0-1" in pro.directives(_req(Resources(), n=2))


def test_torque_nodes_syntax_and_job_wide_memory(torque):
    res = resources_from(Resources(), dict(nodes=2, tasks_per_node=4, gpus_per_node=2, mem_gb=1, walltime=30,
                                            array_parallelism=3))
    assert torque.directives(_req(res, n=1)) == [
        "-N hpcb-f", "-o /home/a/jobs/0123/log/pbs.out", "-j oe", "-l nodes=2:ppn=4:gpus=2", "-l mem=2048mb",
        "-l walltime=00:30:00", "-t 0-0%3",
    ]


def test_bad_requests_fail_before_submission(pro):
    with pytest.raises(ResourceError, match="qos='high': PBS has no quality-of-service option"):
        pro.directives(_req(resources_from(Resources(), {"qos": "high"})))
    with pytest.raises(ResourceError, match="extra_directives entry '--constraint=a100' is not a PBS option"):
        pro.directives(_req(resources_from(Resources(), {"extra_directives": ["--constraint=a100"]})))
    with pytest.raises(ResourceError, match="name='_x': PBS job names must start with a letter or digit"):
        pro.directives(ScriptRequest(Resources(), "/j/0123", "_x", "0123", None))
    with pytest.raises(ResourceError, match="the job folder '/home/a b/0123' cannot be given to PBS"):
        pro.directives(_req(Resources(), folder="/home/a b/0123"))
    assert "-W group_list=proj" in pro.directives(
        _req(resources_from(Resources(), {"extra_directives": ["-W group_list=proj"]}))
    )


def _folder_refused(folder: str) -> str:
    return (
        f"the job folder {folder!r} cannot be given to PBS: -o paths and #PBS lines take letters, digits and "
        "/ . _ + - @ = only (':' reads as host:path, ',' separates a list's values, '%' starts a file name pattern, "
        "and spaces, quotes or shell characters break the Slurm-backed qsub); choose a workdir (site-config) or "
        "folder= of those characters"
    )


@pytest.mark.parametrize("folder", ["/home/a/jobs%x/0123", "/home/a/jobs,x/0123", "/home/a/host:x/0123"])
def test_a_job_folder_with_percent_comma_or_colon_is_refused_saying_why(pro, torque, folder):
    for adapter in (pro, torque):
        with pytest.raises(ResourceError) as info:
            adapter.directives(_req(Resources(), folder=folder))
        assert str(info.value) == _folder_refused(folder)
        with pytest.raises(ResourceError) as info:
            adapter.submit_argv(f"{folder}/script.sh")
        assert str(info.value) == _folder_refused(folder)
    assert pro.directives(_req(Resources(), folder="/home/a/x+y@z=w/0123"))[1] == "-o /home/a/x+y@z=w/0123/log/pbs.out"


def test_a_pbs_workdir_that_pbs_cannot_take_fails_the_executor_before_anything_is_written(tmp_path):
    from hpcbridge import Executor
    from hpcbridge.errors import ConfigError

    comma = tmp_path / "jobs,x"
    with pytest.raises(ResourceError) as info:
        Executor(site=site_from_mapping("p", {"scheduler": "pbs", "workdir": str(comma)}))
    assert str(info.value) == _folder_refused(str(comma))
    percent = tmp_path / "jobs%x"  # refused for every scheduler (the backend: '%' is a pattern in directives)
    with pytest.raises(ConfigError, match=r"the job folder '.*/jobs%x' must be an absolute path without spaces, "
                                          r"quotes, '%' or '#'"):
        Executor(site=site_from_mapping("p", {"scheduler": "pbs", "workdir": str(percent)}))
    assert os.listdir(tmp_path) == []


# -- wiring and helpers ---------------------------------------------------------------------------------------
def test_make_scheduler_reads_the_flavour():
    torque = scheduler_for(site_from_mapping("t", {"scheduler": "pbs", "flavour": "torque"}), "/r")
    assert isinstance(torque, PBSScheduler) and torque.flavour == "torque"
    assert torque.task_index_expr == "${PBS_ARRAYID:-${SLURM_ARRAY_TASK_ID:-0}}"
    pro = scheduler_for(site_from_mapping("p", {"scheduler": "pbs"}), "/r")
    assert isinstance(pro, PBSScheduler) and pro.flavour == "pbspro" and pro.task_index_expr == "${PBS_ARRAY_INDEX:-0}"


def test_helpers():
    hms = [Resources(walltime_s=s).walltime_hms for s in (93784, 59)]  # PBS's walltime, hours past 24
    assert hms[0] == "26:03:04" and hms[1] == "00:00:59"
    assert expand_range("0-4:2,7") == [0, 2, 4, 7]
    assert expand_range("0-3%2") == [0, 1, 2, 3]
    assert expand_range("") == []


# -- finding a submission by its tag (after a connection dropped while qsub ran) ------------------------------
TORQUE_TAGGED = """\
Job Id: 1400.torque-server
    Job_Name = hpcb-train
    job_state = R
    Output_Path = login01:/home/alice/.hpcbridge/jobs/aaaa111122223333/log/pbs.o
    ut
Job Id: 1401[].torque-server
    Job_Name = hpcb-square
    job_state = Q
    Output_Path = login01:/home/alice/.hpcbridge/jobs/bbbb111122223333/log/pbs.out
Job Id: 1401[0].torque-server
    Job_Name = hpcb-square-0
    job_state = R
    Output_Path = login01:/home/alice/.hpcbridge/jobs/bbbb111122223333/log/pbs.out
"""


def test_a_submission_is_found_by_the_tag_in_its_output_path(pro, torque):
    assert torque.find_by_tag_argv("aaaa") == ["qstat", "-f"]
    assert pro.find_by_tag_argv("aaaa") == ["qstat", "-f", "-F", "json", "-x"]  # finished jobs too
    # a value qstat wrapped onto the next line is joined; an array is found under its own id, not a subjob's
    assert torque.parse_find_by_tag(TORQUE_TAGGED, "aaaa111122223333") == "1400.torque-server"
    assert torque.parse_find_by_tag(TORQUE_TAGGED, "bbbb111122223333") == "1401[].torque-server"
    assert torque.parse_find_by_tag(TORQUE_TAGGED, "1111222233334444") is None
    assert torque.parse_find_by_tag(TORQUE_TAGGED, "22223333") is None  # the whole folder name only
    assert torque.parse_find_by_tag("", "aaaa111122223333") is None  # no job at all: it was not submitted
    # PBS Pro's JSON (the fixture's jobs all write to .../0123456789abcdef/log/pbs.out): the first job's id
    text = fixture("pbspro_qstat_json.txt")
    assert pro.parse_find_by_tag(text, "0123456789abcdef") == next(iter(parse_qstat_json(text)))
    assert pro.parse_find_by_tag(text.replace("0123456789abcdef", "ffff"), "0123456789abcdef") is None


def test_a_qstat_without_output_paths_cannot_tell_so_nothing_is_submitted_twice(torque):
    # the Slurm-backed wrappers print a few attributes only: whether the job exists cannot be told
    with pytest.raises(ConnectionLostError, match=r"shows no Output_Path, so whether the job was submitted cannot "
                       r"be told .*\.\.\./0123456789abcdef/log/pbs.out") as info:
        torque.parse_find_by_tag(fixture("slurm_torque_qstat_f.txt"), "0123456789abcdef")
    assert info.value.maybe_ran is True


def _pbs_backend(flavour, steps, monkeypatch):
    monkeypatch.setattr(submit_once, "FIND_BY_TAG_WAITS_S", (0.0, 0.0))
    t = ScriptedTransport(steps)
    return Backend(site_from_mapping("p", {"scheduler": "pbs", "flavour": flavour, "workdir": "/w"}), transport=t), t


def test_after_a_drop_during_qsub_the_job_found_by_its_tag_is_not_submitted_again(monkeypatch):
    lost = ConnectionLostError("the SSH connection to hpc dropped while trying to run qsub", maybe_ran=True)
    argv = ["qsub", "-j", "oe", "-o", "/w/aaaa111122223333/log/pbs.out", "/w/aaaa111122223333/script.sh"]
    b, t = _pbs_backend("torque", [lost, (0, "", ""), (0, TORQUE_TAGGED, "")], monkeypatch)
    out = b.run_checked(argv, "submit the job", tag="aaaa111122223333")
    assert b.scheduler.parse_submit(out.stdout) == "1400.torque-server"
    assert t.calls == [argv, ["qstat", "-f"], ["qstat", "-f"]]  # not yet listed, then found: one qsub only
    # on the wrappers (no Output_Path) the drop is reported, and qsub is not run again
    b, t = _pbs_backend("torque", [lost, (0, fixture("slurm_torque_qstat_f.txt"), "")], monkeypatch)
    with pytest.raises(ConnectionLostError, match="cannot be told"):
        b.run_checked(argv, "submit the job", tag="aaaa111122223333")
    assert t.calls == [argv, ["qstat", "-f"]]
    # when the lookup itself fails, the error says where to look
    b, t = _pbs_backend("torque", [lost, TransportError("still down")], monkeypatch)
    with pytest.raises(ConnectionLostError, match=r"its output goes to \.\.\./aaaa111122223333/log/pbs.out: see "
                       r"`qstat -f` \(Output_Path\)"):
        b.run_checked(argv, "submit the job", tag="aaaa111122223333")


def test_a_bare_arrays_answer_replays_from_its_facts_alone():
    """The adapter keeps nothing between calls: a fresh one given the same query, answer and facts says the same."""
    text = _set_state(_set_state(fixture("slurm_torque_qstat_f.txt"), "749", "C"), "944", "C")
    learned = _bare(PBSScheduler("torque"), text).facts
    assert learned is not None and set(learned.bare_array_keys) == {"749"}
    again = _bare(PBSScheduler("torque"), _drop(text, "749"), learned)
    assert again.statuses["749[3]"].native == "R (array 749: 1 running, 0 queued)" and again.facts is None
    # without the fact, the split-off task 945 cannot be told from other jobs: the group looks over
    assert _bare(PBSScheduler("torque"), _drop(text, "749")).statuses["749[3]"].state == JobState.COMPLETED
