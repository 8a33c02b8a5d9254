"""Batch scripts from Jinja templates: StrictUndefined, and one shell-quoting filter, ``sh``."""

from __future__ import annotations

import functools
import os
import shlex
from typing import Any, Iterable, Optional, Sequence, Tuple

import jinja2


def sh(value: Any) -> str:
    """Quote for the shell exactly once; a list becomes space-separated quoted words."""
    if isinstance(value, (list, tuple)):
        return " ".join(shlex.quote(str(v)) for v in value)
    return shlex.quote(str(value))


def package_template_dir() -> str:
    """hpcbridge's own templates: ``templates/`` beside the package in a source tree, else the installed copy.

    (In a source tree run through PYTHONPATH, an editable install elsewhere would otherwise serve its templates.)
    """
    source_tree = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "templates")
    if os.path.isfile(os.path.join(source_tree, "partials", "body.sh.j2")):
        return source_tree
    from importlib.resources import files

    return str(files("hpcbridge.templates"))


def environment(override_dirs: Sequence[str] = ()) -> jinja2.Environment:
    """A Jinja environment looking in ``override_dirs`` first, then hpcbridge's own templates."""
    dirs = [os.path.expanduser(d) for d in override_dirs] + [package_template_dir()]
    env = jinja2.Environment(  # noqa: S701 - shell scripts, not HTML; values are quoted by |sh
        loader=jinja2.FileSystemLoader(dirs),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["sh"] = sh
    return env


def render(
    template: str,
    context: dict[str, Any],
    override_dirs: Iterable[str] = (),
    env: Optional[jinja2.Environment] = None,
) -> str:
    """Render ``template`` with ``context``; a missing variable is an error, not an empty string."""
    env = env or _cached_environment(tuple(override_dirs))
    return env.get_template(template).render(**context)


@functools.lru_cache(maxsize=32)
def _cached_environment(override_dirs: Tuple[str, ...]) -> jinja2.Environment:
    """One environment per set of template folders: templates compile once (the loader still sees edits)."""
    return environment(list(override_dirs))
