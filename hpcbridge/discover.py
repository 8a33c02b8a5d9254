"""``hpcbridge sites discover``: a site-config written from a live Slurm cluster, for the admin to edit.

Three commands (``scontrol show partition``, ``scontrol show node``, ``scontrol show config``), run through a
transport; everything else here is pure: parsers and a TOML writer.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Dict, List, Optional, Sequence

from .errors import SchedulerError
from .spec import parse_walltime
from .transport.base import Transport

PARTITIONS_ARGV = ["scontrol", "--oneliner", "show", "partition"]
NODES_ARGV = ["scontrol", "--oneliner", "show", "node"]
CONFIG_ARGV = ["scontrol", "show", "config"]


def parse_records(text: str) -> List[Dict[str, str]]:
    """``scontrol --oneliner`` output: one record per line of ``Key=Value`` words.

    A word without ``=`` belongs to the previous value (``OS=Linux 6.1.0 #1 SMP``).
    """
    records = []
    for line in text.splitlines():
        record: Dict[str, str] = {}
        last = ""
        for word in line.split():
            key, eq, value = word.partition("=")
            if eq and re.fullmatch(r"[A-Za-z][A-Za-z0-9_:/]*", key):
                record[key] = value
                last = key
            elif last:
                record[last] += " " + word
        if record:
            records.append(record)
    return records


def parse_config(text: str) -> Dict[str, str]:
    """``scontrol show config``: ``Key = Value`` lines."""
    out: Dict[str, str] = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


def parse_gres(gres: str) -> Dict[str, Any]:
    """GPUs in a node's ``Gres`` (``gpu:a100:4(S:0-1),gpu:v100:2``): ``{'count': 6, 'types': ['a100', 'v100']}``."""
    count = 0
    types: List[str] = []
    for item in re.split(r",(?![^(]*\))", gres or ""):
        item = re.sub(r"\(.*\)$", "", item.strip())
        parts = item.split(":")
        if not parts or parts[0] != "gpu":
            continue
        number = parts[-1] if len(parts) > 1 and parts[-1].isdigit() else "1"
        count += int(number)
        if len(parts) == 3 or (len(parts) == 2 and not parts[1].isdigit()):
            types.append(parts[1])
    return {"count": count, "types": sorted(set(types))}


@dataclasses.dataclass
class FoundPartition:
    name: str
    default: bool
    nodes: int
    max_nodes: Optional[int]
    cpus_per_node: Optional[int]
    mem_gb_per_node: Optional[float]
    gpus_per_node: int
    gpu_type: str
    max_walltime: Optional[str]
    heterogeneous: bool
    state: str


def _walltime(value: str) -> Optional[str]:
    if not value or value.upper() in ("UNLIMITED", "NONE", "INFINITE"):
        return None
    seconds = parse_walltime(value)
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{days}-{h:02d}:{m:02d}:{s:02d}" if days else f"{h:02d}:{m:02d}:{s:02d}"


def _int(value: Optional[str]) -> Optional[int]:
    return int(value) if value and value.isdigit() else None


def partitions_from(partitions: List[Dict[str, str]], nodes: List[Dict[str, str]]) -> List[FoundPartition]:
    """Partition limits from the partition records and the node records (``Partitions=`` on each node)."""
    out = []
    for rec in partitions:
        name = rec.get("PartitionName", "")
        if not name:
            continue
        members = [n for n in nodes if name in n.get("Partitions", "").split(",")]
        cpus = [c for c in (_int(n.get("CPUTot")) for n in members) if c is not None]
        mems = [m for m in (_int(n.get("RealMemory")) for n in members) if m is not None]
        gres = [parse_gres(n.get("Gres", "")) for n in members]
        gpus = [g["count"] for g in gres]
        gpu_types = sorted({t for g in gres for t in g["types"]})
        total = _int(rec.get("TotalNodes")) or len(members)
        max_nodes = _int(rec.get("MaxNodes"))
        max_nodes = min(max_nodes, total) if max_nodes and total else (max_nodes or total or None)
        max_cpus = _int(rec.get("MaxCPUsPerNode"))
        cpu_limit = max(cpus) if cpus else None
        if max_cpus is not None and cpu_limit is not None:
            cpu_limit = min(cpu_limit, max_cpus)
        mem_gb = round(max(mems) / 1024, 2) if mems else None
        max_mem = _int(rec.get("MaxMemPerNode"))
        if max_mem is not None and mem_gb is not None:
            mem_gb = min(mem_gb, round(max_mem / 1024, 2))
        out.append(
            FoundPartition(
                name=name,
                default=rec.get("Default", "NO").upper() == "YES",
                nodes=total,
                max_nodes=max_nodes,
                cpus_per_node=cpu_limit,
                mem_gb_per_node=mem_gb,
                gpus_per_node=max(gpus) if gpus else 0,
                gpu_type=",".join(gpu_types),
                max_walltime=_walltime(rec.get("MaxTime", "")),
                heterogeneous=len(set(cpus)) > 1 or len(set(mems)) > 1 or len(set(gpus)) > 1,
                state=rec.get("State", ""),
            )
        )
    return out


def toml_value(value: Any) -> str:
    """A TOML literal for a str, bool, int, float or list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {type(value).__name__}")


def render_site(
    name: str, found: Sequence[FoundPartition], config: Dict[str, str], python: str, source: str
) -> str:
    """The site-config text: values found, with comments saying where they came from and what to check."""
    cluster = config.get("ClusterName", name)
    version = config.get("SLURM_VERSION", "?")
    accounting = "slurmdbd" in config.get("AccountingStorageType", "")
    mpi = config.get("MpiDefault", "none")
    max_array = _int(config.get("MaxArraySize"))
    gres_types = config.get("GresTypes", "")
    default = next((p.name for p in found if p.default), found[0].name if found else None)
    lines = [
        f"# Site-config for Slurm cluster {cluster!r} (Slurm {version}), written by `hpcbridge sites discover`",
        f"# from {source} on {time.strftime('%Y-%m-%d %H:%M')}. Check every value, then install it as",
        f"# /etc/hpcbridge/sites/{name}.toml (or ship it in a package; see docs/site-configs.md).",
        f"description = {toml_value(f'Slurm cluster {cluster} (discovered)')}",
        'scheduler = "slurm"',
        'transport = "local"',
        "# The cluster-side python: the same major.minor as users' python, with hpcbridge and cloudpickle installed,",
        "# visible on every compute node. This is the python that ran discover: check it.",
        f"python = {toml_value(python)}",
        'workdir = "~/.hpcbridge/jobs"  # must be on a filesystem the compute nodes share',
        f"accounting = {toml_value(accounting)}  # AccountingStorageType = {config.get('AccountingStorageType', '?')}",
    ]
    if max_array:
        lines.append(f"max_array_size = {max_array}  # MaxArraySize = {max_array}")
    lines += ["poll_interval_min_s = 0.5", "poll_interval_max_s = 60", ""]
    lines.append("[defaults]")
    if default:
        lines.append(f"partition = {toml_value(default)}")
    lines += ['walltime = "00:30:00"  # pick a sensible default for your users', "# account = \"...\"", ""]
    for p in found:
        lines.append(f"[partitions.{p.name if re.fullmatch(r'[A-Za-z0-9_-]+', p.name) else toml_value(p.name)}]")
        notes = [f"{p.nodes} node{'s' if p.nodes != 1 else ''}", f"state {p.state}" if p.state else ""]
        if p.heterogeneous:
            notes.append("nodes differ: the limits below are the largest node's")
        lines.append("# " + ", ".join(n for n in notes if n))
        if p.default:
            lines.append("default = true")
        for key in ("max_nodes", "cpus_per_node", "mem_gb_per_node", "max_walltime"):
            value = getattr(p, key)
            if value is not None:
                lines.append(f"{key} = {toml_value(value)}")
        lines.append(f"gpus_per_node = {p.gpus_per_node}")
        if p.gpu_type:
            lines.append(f"gpu_type = {toml_value(p.gpu_type)}")
        lines.append("")
    lines.append("[slurm]")
    if mpi and mpi.lower() != "none":
        lines.append(f"mpi = {toml_value(mpi)}  # MpiDefault")
    else:
        lines.append('# mpi = "pmix"  # MpiDefault is none: set the srun --mpi plugin your MPI needs')
    lines.append(
        f'gpu_directive = "{"gres" if "gpu" in gres_types else "gpus-per-node"}"  # GresTypes = {gres_types or "?"}'
    )
    lines += ["", "[env]", '# OMPI_MCA_btl = "self,tcp"', ""]
    return "\n".join(lines)


def discover(transport: Transport, name: Optional[str], python: str, source: str) -> str:
    """Run the three scontrol commands through ``transport`` and return the site-config text."""
    outputs = []
    for argv in (PARTITIONS_ARGV, NODES_ARGV, CONFIG_ARGV):
        out = transport.run(argv, timeout=60)
        if out.returncode != 0:
            raise SchedulerError(
                "could not read the cluster's configuration (is this a Slurm login node?)",
                argv=out.argv,
                exit_code=out.returncode,
                stderr=out.stderr,
            )
        outputs.append(out.stdout)
    found = partitions_from(parse_records(outputs[0]), parse_records(outputs[1]))
    if not found:
        raise SchedulerError("scontrol show partition listed no partitions", argv=PARTITIONS_ARGV)
    config = parse_config(outputs[2])
    return render_site(name or config.get("ClusterName") or "mycluster", found, config, python, source)
