"""What every use pays before work starts: ``import hpcbridge``, the client's import of the Executor, and the worker's
start in a job (``python -m hpcbridge.worker FOLDER`` running one tiny call), for this tree and a baseline tree.

    python benchmarks/bench_imports.py [--baseline DIR] [--rounds N]

``--baseline``: another checkout of hpcbridge (e.g. ``git worktree add /tmp/base d9d1175``); each measurement runs
both trees interleaved, round by round, so the machine's noise hits both alike; the figures are medians and the
ratio is this tree's over the baseline's. The floor is a bare ``python -c pass``. Besides seconds it prints the
number of modules each start imports (a figure that does not depend on the machine's load).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COUNT = "import atexit, sys\natexit.register(lambda: open({out!r}, 'w').write(str(len(sys.modules))))\n"
CASES = {
    "python -c pass (floor)": "pass",
    "import hpcbridge": "import hpcbridge",
    "from hpcbridge import Executor": "from hpcbridge import Executor",
    "worker start, one call": "import runpy, sys\nsys.argv = ['hpcbridge.worker', {folder!r}]\n"
                              "runpy.run_module('hpcbridge.worker', run_name='__main__')",
}


def make_folder(tree: str) -> str:
    """A job folder with one call (pow(2, 10)) in the tree's own inputs format."""
    folder = tempfile.mkdtemp(prefix="hpcb-bench-")
    os.makedirs(os.path.join(folder, "res"))
    code = (
        "import cloudpickle, sys\n"
        "try:\n    from hpcbridge.store import pack_inputs\n"
        "except ImportError:\n    from hpcbridge._format import pack_inputs\n"
        f"blob = cloudpickle.dumps([(pow, (2, 10), {{}})])\n"
        f"open({os.path.join(folder, 'inputs.bin')!r}, 'wb').write(pack_inputs([blob]))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": tree})
    return folder


def once(tree: str, code: str, folder: str) -> Tuple[float, int]:
    with tempfile.NamedTemporaryFile("r", suffix=".n") as out:
        script = COUNT.format(out=out.name) + code.format(folder=folder)
        env = {**os.environ, "PYTHONPATH": tree, "HPCBRIDGE_TASK": "0"}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd="/", stdout=subprocess.DEVNULL)
        took = time.perf_counter() - start
        return took, int(out.read() or 0)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="another hpcbridge checkout to compare with")
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args(argv)
    trees: Dict[str, str] = {"this tree": HERE}
    if args.baseline:
        trees["baseline"] = os.path.abspath(args.baseline)
    folders = {name: make_folder(tree) for name, tree in trees.items()}
    print(f"{'start':32} {'tree':10} {'median s':>9} {'modules':>8} {'ratio':>6}")
    for label, code in CASES.items():
        times: Dict[str, List[float]] = {name: [] for name in trees}
        mods: Dict[str, int] = {}
        for _ in range(args.rounds):
            for name, tree in trees.items():  # interleaved: the noise hits both
                took, mods[name] = once(tree, code, folders[name])
                times[name].append(took)
        base = statistics.median(times["baseline"]) if "baseline" in times else None
        for name in trees:
            med = statistics.median(times[name])
            ratio = f"{med / base:6.2f}" if base and name != "baseline" else ""
            print(f"{label:32} {name:10} {med:9.4f} {mods[name]:8d} {ratio:>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
