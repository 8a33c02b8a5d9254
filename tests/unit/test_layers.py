"""The house's layer order (docs/design.md, "The map"): every import inside hpcbridge goes down or sideways, never
up, and no modules import each other in a cycle, counting imports inside functions and under TYPE_CHECKING.

A new module must be placed in LAYERS: the test names it otherwise."""

from __future__ import annotations

import ast
import fnmatch
import os
import re
from typing import Dict, List, Set

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "hpcbridge")

#: lowest first; a module may import modules of its own layer or of a lower one. Patterns are fnmatch patterns.
LAYERS: List[List[str]] = [
    # foundations: standard library only (and cloudpickle/jinja2 where named)
    ["hpcbridge._version", "hpcbridge.errors", "hpcbridge.state", "hpcbridge.store", "hpcbridge.hostlist",
     "hpcbridge._proc", "hpcbridge.registry", "hpcbridge.transport.base", "hpcbridge.usage"],
    # the pure model: resource requests, the in-job allocation tables, pickling of calls
    ["hpcbridge.spec", "hpcbridge.schedulers.allocation", "hpcbridge.pickling", "hpcbridge.advice", "hpcbridge.waste"],
    # inside the job (what the worker start pays for: nothing above this layer)
    ["hpcbridge.jobenv", "hpcbridge.checkpoint", "hpcbridge.ports", "hpcbridge.gpus", "hpcbridge.rendezvous",
     "hpcbridge.distributed", "hpcbridge.worker", "hpcbridge.sampler", "hpcbridge.commands",
     "hpcbridge.torchrun_agent",
     "hpcbridge.schedulers.local_runner",
     "hpcbridge.schedulers.local_limits"],
    # what decides (pure): site-configs, scheduler adapters, launchers, the batch script
    ["hpcbridge.sites", "hpcbridge.sites.*", "hpcbridge.schedulers", "hpcbridge.schedulers.*", "hpcbridge.launchers",
     "hpcbridge.render", "hpcbridge.script", "hpcbridge.discover", "hpcbridge.containers"],
    # what does: the one seam to the cluster side
    ["hpcbridge.transport", "hpcbridge.transport.*"],
    # the futures and how they look
    ["hpcbridge.display", "hpcbridge.usage_figure", "hpcbridge.job", "hpcbridge.group"],
    # watching submissions
    ["hpcbridge.outcome", "hpcbridge.attempts", "hpcbridge.chain", "hpcbridge.submission", "hpcbridge.measure",
     "hpcbridge.poll"],
    # one site at run time
    ["hpcbridge.submit_once", "hpcbridge.remote_env", "hpcbridge.container_check", "hpcbridge.backend",
     "hpcbridge.here", "hpcbridge.live"],
    # the API
    ["hpcbridge.after", "hpcbridge.attaching", "hpcbridge.right_size", "hpcbridge.executor"],
    # the command line, test doubles for users, and the package root (which imports lazily)
    ["hpcbridge.cli", "hpcbridge.cli.*", "hpcbridge.testing", "hpcbridge"],
]


def _modules() -> Dict[str, str]:
    found = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                found[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return found


MODULES = _modules()


def _imports(module: str, path: str) -> Set[str]:
    """Every hpcbridge module ``module`` imports, wherever the import statement stands."""
    package = module.split(".") if path.endswith("__init__.py") else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package[: len(package) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                out.add(target if target in MODULES else base)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in MODULES and m != module}


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def layer_of(module: str) -> int:
    """The last layer with a pattern that matches (``hpcbridge.schedulers.allocation`` before ``.schedulers.*``)."""
    exact = [i for i, layer in enumerate(LAYERS) if module in layer]
    if exact:
        return exact[0]
    matches = [i for i, layer in enumerate(LAYERS) if any(fnmatch.fnmatchcase(module, p) for p in layer)]
    if not matches:
        raise LookupError(module)
    return matches[0]


def test_every_module_has_a_layer():
    unplaced = []
    for module in sorted(MODULES):
        try:
            layer_of(module)
        except LookupError:
            unplaced.append(module)
    assert not unplaced, f"place these modules in tests/unit/test_layers.py LAYERS (and docs/design.md): {unplaced}"


def test_imports_go_down_or_sideways_never_up():
    upward = [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in sorted(GRAPH.items())
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_one():
    """The check above can fail: a cycle of three is found, a chain is not."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


@pytest.mark.parametrize("module", ["hpcbridge.worker", "hpcbridge.rendezvous", "hpcbridge.commands"])
def test_the_in_job_side_imports_nothing_of_the_client(module):
    """What runs on every job start reaches only the foundations, the model and the in-job layer."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(GRAPH[m])
    assert {m for m in seen if layer_of(m) > 2} == set()


def test_every_package_is_installed():
    """pyproject.toml lists each package folder (templates/ stands beside the package, so discovery cannot)."""
    text = open(os.path.join(ROOT, "..", "pyproject.toml")).read()
    listed = set(re.findall(r'"(hpcbridge[a-z_.]*)"', text.split("packages = [", 1)[1].split("]", 1)[0]))
    packages = {m for m, p in MODULES.items() if p.endswith("__init__.py")}
    assert packages <= listed, f"add to pyproject.toml [tool.setuptools] packages: {sorted(packages - listed)}"


def test_no_scheduler_names_outside_schedulers():
    """A new scheduler is an adapter, a template and a registry entry: no module outside schedulers/ branches on a
    scheduler's name."""
    branch = re.compile(r"""scheduler\s*(==|!=|not in|in)\s*[("']""")
    found = [
        f"{m}: {line.strip()}"
        for m, p in sorted(MODULES.items())
        if not m.startswith("hpcbridge.schedulers")
        for line in open(p)
        if branch.search(line)
    ]
    assert not found, "\n".join(found)


#: the local site's batch system: run where its jobs run, it reads the clock, files and /proc
RUNNER_SIDE = ("hpcbridge.schedulers.local_runner", "hpcbridge.schedulers.local_limits")


def test_adapters_read_no_clock_environment_or_files():
    """The adapters are functions of their inputs (the local site's runner and its limits, a cluster-side program,
    are not adapters)."""
    reads = re.compile(r"\btime\.(time|monotonic)\(|os\.environ|\bopen\(|os\.getcwd|os\.cpu_count|datetime\.now")
    found = [
        f"{m}: {line.strip()}"
        for m, p in sorted(MODULES.items())
        if m.startswith("hpcbridge.schedulers") and m not in RUNNER_SIDE
        for line in open(p)
        if reads.search(line)
    ]
    assert not found, "\n".join(found)
