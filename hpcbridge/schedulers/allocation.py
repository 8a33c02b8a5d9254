"""What each batch system tells a running job about its allocation, declared as data next to the adapters.

The in-job code (:mod:`hpcbridge.jobenv`) walks :data:`ALLOCATIONS` and never names a scheduler, so a new batch
system adds one value here. Imported inside every job: standard library only, and no adapter is imported.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple


class Allocation(NamedTuple):
    """The environment variables through which one batch system describes a job to its processes.

    Each ``*_vars`` field lists names in the order they are tried: the first one set (non-empty) wins. A
    NamedTuple, not a dataclass: immutable all the same, and ``dataclasses`` (with ``inspect``) would add ~4 ms
    to the launch step, which imports nothing else that needs it.
    """

    #: the adapter's name, as ``JobEnvironment.scheduler`` reports it
    scheduler: str
    #: the job's id; the first allocation whose job id is set is the job's
    job_id_vars: Tuple[str, ...] = ()
    #: an array task's parent job id and index: when both are set, the job id is ``PARENT_INDEX``
    array_job_id_vars: Tuple[str, ...] = ()
    array_task_id_vars: Tuple[str, ...] = ()
    #: the allocated nodes as a Slurm hostlist expression (``node[1-3]``)
    nodelist_vars: Tuple[str, ...] = ()
    #: a file naming the allocated nodes, one line per slot (a node repeated per slot); also what
    #: ``{nodefile}`` becomes in a launcher's argv
    nodefile_var: str = ""
    #: CPUs per task (``OMP_NUM_THREADS`` is the fallback everywhere)
    cpus_per_task_vars: Tuple[str, ...] = ()
    #: when the job's time is up, epoch seconds (where the batch system says so: Slurm 23.02 and later)
    end_time_vars: Tuple[str, ...] = ()


SLURM = Allocation(
    "slurm",
    job_id_vars=("SLURM_JOB_ID", "SLURM_JOBID"),
    array_job_id_vars=("SLURM_ARRAY_JOB_ID",),
    array_task_id_vars=("SLURM_ARRAY_TASK_ID",),
    nodelist_vars=("SLURM_JOB_NODELIST", "SLURM_NODELIST"),
    cpus_per_task_vars=("SLURM_CPUS_PER_TASK",),
    end_time_vars=("SLURM_JOB_END_TIME",),
)

#: PBS_JOBID already names an array's subjob (``123[4].server``): no composition needed
PBS = Allocation("pbs", job_id_vars=("PBS_JOBID",), nodefile_var="PBS_NODEFILE")

#: no batch system (and the local runner, which sets only hpcbridge's own variables): this machine alone. The
#: runner's cpus_per_task variable is hpcbridge.jobenv.CPUS_PER_TASK_VAR.
LOCAL = Allocation("local", cpus_per_task_vars=("HPCBRIDGE_CPUS_PER_TASK",))

#: in the order they are tried (Slurm first: under a Torque-compatible layer over Slurm the job is Slurm's)
ALLOCATIONS: Tuple[Allocation, ...] = (SLURM, PBS)
