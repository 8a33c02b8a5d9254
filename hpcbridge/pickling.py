"""Calls into bytes for the job (cloudpickle), with a message naming the exact part that cannot be pickled, and
the names a job gets from its function."""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cloudpickle

from .errors import SerializationError

#: one call: the function, its positional and its keyword arguments
Call = Tuple[Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]

_HINT = "Pass only picklable values; create locks, open files, sockets and clients inside the function."


def pickle_task(task: Sequence[Call], first: Optional[int] = None) -> bytes:
    """Pickle one task's calls, or explain exactly which part cannot be pickled.

    ``first`` is the index of the task's first call within a map, for the message.
    """
    try:
        return bytes(cloudpickle.dumps(list(task)))
    except Exception as exc:
        raise _explain(task, exc, first) from exc


def _explain(task: Sequence[Call], exc: Exception, first: Optional[int]) -> SerializationError:
    for i, (fn, args, kwargs) in enumerate(task):
        name = qualname(fn) + ("" if first is None else f" in call {first + i} of the map")
        parts: List[Tuple[str, Any]] = [(f"the function {name}", fn)]
        parts += [(f"argument {i} of {name} ({type(a).__name__})", a) for i, a in enumerate(args)]
        parts += [(f"keyword argument {k!r} of {name} ({type(v).__name__})", v) for k, v in kwargs.items()]
        for what, obj in parts:
            try:
                cloudpickle.dumps(obj)
            except Exception as inner:
                return SerializationError(f"cannot pickle {what}: {type(inner).__name__}: {inner}. {_HINT}")
    return SerializationError(f"cannot pickle the call: {type(exc).__name__}: {exc}. {_HINT}")


def qualname(fn: Any) -> str:
    """``module.Qualified.name`` of a callable (the registry's and meta.json's ``function``)."""
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{mod}.{name}" if mod else name


def job_name(fn: Any) -> str:
    """A scheduler-safe job name from the function's name: ``hpcb-train_model``."""
    name = re.sub(r"[^A-Za-z0-9_.+\-]", "_", getattr(fn, "__name__", None) or type(fn).__name__)
    return f"hpcb-{name}"[:64]


def describe(fn: Any, ncalls: int) -> str:
    """One line for the batch script's header: the function and how many calls the job carries."""
    text = f"{qualname(fn)}, {ncalls} call{'s' if ncalls != 1 else ''}"
    return re.sub(r"[\r\n]", " ", text)
