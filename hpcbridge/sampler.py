"""The in-job sampler, always on: each rank's CPU time and peak RSS (its own and its children's) and, when
``nvidia-ml-py`` imports and a GPU is visible, its GPUs' utilisation and memory, sampled in a thread.

The worker starts one per rank (:func:`start`) before it runs the calls and stops it after (:meth:`Sampler.stop`):
a small JSON summary is written next to the rank's result (``JobFolder.usage``), and rewritten every
``WRITE_EVERY_S`` while the job runs, so a job killed at its walltime leaves its figures up to the last write.

Cost: one thread that wakes every ``interval_s`` (5 s; ``HPCBRIDGE_SAMPLE_S`` overrides it) for two NVML calls per
GPU, and every ``WRITE_EVERY_S`` for ``getrusage`` and a file write; its own CPU time is in the summary
(``sampler_cpu_s``). benchmarks/bench_sampler.py measures it.

Standard library only (the worker imports it on every job start); ``pynvml`` (nvidia-ml-py) is imported in the
thread, only when it is installed.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import socket
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .jobenv import CUDA_VISIBLE_DEVICES_VAR, SAMPLE_INTERVAL_VAR
from .store import write_atomic

#: seconds between GPU samples
DEFAULT_INTERVAL_S = 5.0
#: seconds between rewrites of the summary while the job runs
WRITE_EVERY_S = 30.0
NO_NVML = "no GPU data (NVML not available)"
NO_GPU = "no GPU data (no GPU visible to the job)"

Sample = Tuple[int, int, int]  # (device index, utilisation %, memory used in bytes)


class GpuStats:
    """GPU samples folded as they come: a histogram of utilisation per percent, the memory peak per device."""

    def __init__(self) -> None:
        self.counts = [0] * 101
        self.mem_peak: Dict[int, int] = {}
        self.mem_total: Dict[int, int] = {}

    def add(self, device: int, util_percent: int, mem_used: int, mem_total: int = 0) -> None:
        self.counts[max(0, min(100, int(util_percent)))] += 1
        self.mem_peak[device] = max(self.mem_peak.get(device, 0), int(mem_used))
        if mem_total:
            self.mem_total[device] = int(mem_total)

    def summary(self) -> Optional[Dict[str, Any]]:
        """mean, p50 and p95 utilisation (0..1), the share of samples at 0 % (idle), the largest memory in use on
        one device; None without samples."""
        n = sum(self.counts)
        if not n:
            return None
        return {
            "samples": n,
            "devices": len(self.mem_peak),
            "utilization_mean": sum(p * c for p, c in enumerate(self.counts)) / n / 100,
            "utilization_p50": _percentile(self.counts, 0.50) / 100,
            "utilization_p95": _percentile(self.counts, 0.95) / 100,
            "idle_fraction": self.counts[0] / n,
            "mem_peak_bytes": max(self.mem_peak.values()),
            "mem_total_bytes": max(self.mem_total.values()) if self.mem_total else None,
        }


def summarize_gpu(samples: Sequence[Sample]) -> Optional[Dict[str, Any]]:
    """The summary of recorded samples ``(device, utilisation %, memory used bytes)``."""
    stats = GpuStats()
    for device, util, mem in samples:
        stats.add(device, util, mem)
    return stats.summary()


def _percentile(counts: List[int], q: float) -> int:
    """The smallest percent at or below which a share ``q`` of the samples lie (nearest rank)."""
    n = sum(counts)
    rank = max(1, int(q * n + 0.999999))
    seen = 0
    for percent, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return percent
    return 100


def visible_devices(count: int, cuda_visible: Optional[str]) -> List[int]:
    """The NVML indices the job may use: ``CUDA_VISIBLE_DEVICES`` when it lists indices (a cgroup already hides
    the others from NVML), else every device NVML sees."""
    if cuda_visible is None or cuda_visible.strip() == "":
        return list(range(count)) if cuda_visible is None else []
    picked: List[int] = []
    for item in cuda_visible.split(","):
        item = item.strip()
        if not item.isdigit():  # UUIDs, MIG names: NVML's own order is the best guess
            return list(range(count))
        if int(item) < count:
            picked.append(int(item))
    return picked


def own_usage() -> Tuple[float, int]:
    """CPU seconds (user + system) and peak RSS in bytes of this process plus its finished children (Linux
    ``ru_maxrss`` is in KiB; the children's is the largest one's peak)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return cpu, (me.ru_maxrss + kids.ru_maxrss) * 1024


class Sampler:
    """One rank's sampler (see the module's docstring)."""

    def __init__(self, path: str, rank: int, interval_s: float = DEFAULT_INTERVAL_S,
                 node: Optional[str] = None, cuda_visible: Optional[str] = None) -> None:
        self.path = path
        self.rank = rank
        self.node = node or socket.gethostname()
        self.interval_s = interval_s
        self.cuda_visible = cuda_visible
        self.started = time.time()
        self.gpu = GpuStats()
        self.note = ""
        self.thread_cpu_s = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._final: Optional[Dict[str, Any]] = None

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="hpcbridge-sampler", daemon=True)
        self._thread.start()
        return self

    def summary(self, finished: bool = False) -> Dict[str, Any]:
        cpu, rss = own_usage()
        with self._lock:
            gpu = self.gpu.summary()
            note = self.note
        return {
            "version": 1,
            "node": self.node,
            "rank": self.rank,
            "pid": os.getpid(),
            "started": self.started,
            "finished": time.time(),
            "complete": finished,
            "cpu_time_s": cpu,
            "peak_rss_bytes": rss,
            "gpu": gpu,
            "notes": [note] if note and gpu is None else [],
            "interval_s": self.interval_s,
            "sampler_cpu_s": self.thread_cpu_s,
        }

    def write(self, finished: bool = False) -> Dict[str, Any]:
        summary = self.summary(finished)
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            write_atomic(self.path, json.dumps(summary).encode())
        except OSError:  # the figures are a courtesy: never fail a job over them
            pass
        return summary

    def stop(self) -> Dict[str, Any]:
        """Stop the thread and write the final summary; the summary. Once: later calls (the ``atexit`` one after
        the worker's own) return the same summary."""
        if self._final is not None:
            return self._final
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._final = self.write(finished=True)
        return self._final

    # -- the thread -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        t0 = time.thread_time()
        nvml, handles = self._open_nvml()
        next_write = time.monotonic() + WRITE_EVERY_S
        wait = self.interval_s if handles else WRITE_EVERY_S
        try:
            while not self._stop.wait(wait):
                if handles:
                    self._sample(nvml, handles)
                if time.monotonic() >= next_write:
                    next_write = time.monotonic() + WRITE_EVERY_S
                    self.thread_cpu_s = time.thread_time() - t0
                    self.write()
                self.thread_cpu_s = time.thread_time() - t0
        finally:
            if handles:
                try:
                    nvml.nvmlShutdown()
                except Exception:
                    pass
            self.thread_cpu_s = time.thread_time() - t0

    def _open_nvml(self) -> Tuple[Any, List[Tuple[int, Any]]]:
        try:
            import pynvml  # nvidia-ml-py
        except ImportError:
            self.note = NO_NVML
            return None, []
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            handles = [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in visible_devices(count, self.cuda_visible)]
        except Exception:  # NVMLError: no driver, no library
            self.note = NO_NVML
            return None, []
        if not handles:
            self.note = NO_GPU
            try:
                pynvml.nvmlShutdown()
            except Exception:
                pass
        return pynvml, handles

    def _sample(self, nvml: Any, handles: List[Tuple[int, Any]]) -> None:
        for index, handle in handles:
            try:
                util = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception:
                continue
            with self._lock:
                self.gpu.add(index, util, mem.used, mem.total)


def start(path: str, rank: int) -> Sampler:
    """The worker's sampler for one rank, started (``HPCBRIDGE_SAMPLE_S`` sets the GPU interval)."""
    try:
        interval = float(os.environ.get(SAMPLE_INTERVAL_VAR, "") or DEFAULT_INTERVAL_S)
    except ValueError:
        interval = DEFAULT_INTERVAL_S
    meter = Sampler(path, rank, max(0.5, interval), cuda_visible=os.environ.get(CUDA_VISIBLE_DEVICES_VAR)).start()
    atexit.register(meter.stop)  # a worker that leaves another way than through its end (sys.exit in between)
    return meter
