"""``hpcbridge sites list | show | check | discover``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Tuple

from ..errors import ConfigError, HpcBridgeError
from .output import OK, USAGE, CliError, Out, report


def add_parser(sub: Any) -> None:
    """Add ``sites`` and its subcommands to the ``hpcbridge`` parser's subparsers ``sub``."""
    sites = sub.add_parser("sites", help="site-configs: list, show, check, discover")
    ssub = sites.add_subparsers(dest="sites_command", metavar="SUBCOMMAND")
    ssub.required = True

    p = ssub.add_parser("list", help="the sites this machine knows, and which layers define them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = ssub.add_parser("show", help="a site's merged settings (as TOML)")
    p.add_argument("name")
    p.add_argument("--origin", action="store_true", help="say where each value came from (file:line)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = ssub.add_parser("check", help="validate site-config files (default: every known site)")
    p.add_argument("files", nargs="*", metavar="FILE", help="a site-config (NAME.toml) or a project hpcbridge.toml")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)

    p = ssub.add_parser("discover", help="write a site-config from the live Slurm cluster, for an admin to edit")
    p.add_argument("name", nargs="?", help="site name (default: the cluster's ClusterName)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    p.add_argument("--force", action="store_true", help="overwrite FILE")
    p.add_argument("--via", metavar="SITE", help="run scontrol through this site's transport (e.g. an ssh site)")
    p.add_argument("--python", help="the cluster-side python to write (default: this python, for a local run)")
    p.set_defaults(func=cmd_discover)


# -- list -------------------------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace, out: Out) -> int:
    from ..sites import load_site, site_names

    rows: List[Dict[str, Any]] = []
    for name, kinds in site_names().items():
        entry: Dict[str, Any] = {"name": name, "layers": kinds}
        try:
            site = load_site(name)
            entry.update(scheduler=site.scheduler, transport=site.transport, description=site.description,
                         error="")
        except HpcBridgeError as exc:
            entry.update(scheduler="", transport="", description="", error=str(exc).splitlines()[0])
        rows.append(entry)
    if out.json_mode:
        out.json(rows)
        return OK
    table = [
        [r["name"], r["scheduler"], r["transport"], "+".join(r["layers"]),
         r["description"] if not r["error"] else f"INVALID: {r['error']}"]
        for r in rows
    ]
    out.table(["SITE", "SCHEDULER", "TRANSPORT", "LAYERS", "DESCRIPTION"], table,
              ["red" if r["error"] else "" for r in rows])
    return OK


# -- show -------------------------------------------------------------------------------------------------------
def flatten(site: Any) -> List[Tuple[str, Any]]:
    """``(dotted key, value)`` in schema order, skipping empty tables; partitions as their TOML keys."""
    from ..sites.schema import SCHEMA

    items: List[Tuple[str, Any]] = []
    for key, spec in SCHEMA.items():
        value = getattr(site, key)
        if spec.kind in ("table", "env", "resources"):
            for sub, v in dict(value).items():
                if isinstance(v, dict):
                    for k2, v2 in v.items():
                        items.append((f"{key}.{sub}.{k2}", v2))
                else:
                    items.append((f"{key}.{sub}", v))
        elif spec.kind == "map":
            for pname, part in value.items():
                for k2, v2 in _partition_data(part).items():
                    items.append((f"{key}.{pname}.{k2}", v2))
        else:
            items.append((key, list(value) if isinstance(value, tuple) else value))
    return items


def _partition_data(part: Any) -> Dict[str, Any]:
    from ..sites.schema import PARTITION

    out: Dict[str, Any] = {}
    for key in PARTITION:
        value = getattr(part, key)
        if value is None or value == "" or (key == "default" and not value):
            continue
        out[key] = value
    return out


def render_toml(site: Any, origins: bool) -> str:
    """The merged site as TOML; with ``origins``, each value ends with ``# file:line``."""
    from ..discover import toml_value

    lines: List[Tuple[str, str]] = []
    current = ""
    for key, value in flatten(site):
        parts = key.split(".")
        table, leaf = ".".join(parts[:-1]), parts[-1]
        if table != current:
            lines.append(("", ""))
            lines.append((f"[{table}]", ""))
            current = table
        if not _is_bare(leaf):
            leaf = toml_value(leaf)
        try:
            text = f"{leaf} = {toml_value(value)}"
        except TypeError:
            text = f"{leaf} = {toml_value(str(value))}"
        lines.append((text, site.origins.get(key, "") if origins else ""))
    width = max((len(t) for t, o in lines if o), default=0)
    body = [f"{t.ljust(width)}  # {o}" if o else t for t, o in lines]
    return f"# site {site.name!r}\n" + "\n".join(body).strip("\n") + "\n"


def _is_bare(key: str) -> bool:
    return bool(key) and all(c.isalnum() or c in "_-" for c in key)


def cmd_show(args: argparse.Namespace, out: Out) -> int:
    from ..sites import load_site

    site = load_site(args.name)
    if out.json_mode:
        out.json({
            "name": site.name,
            "layers": list(site.origin),
            "values": {k: {"value": v, "origin": site.origins.get(k, "")} for k, v in flatten(site)},
        })
        return OK
    text = render_toml(site, args.origin)
    if args.origin:
        layers = "\n".join(f"#   {i + 1}. {layer}" for i, layer in enumerate(site.origin))
        text = text.replace("\n", f"\n# layers, lowest first:\n{layers}\n", 1) if layers else text
    sys.stdout.write(text)
    return OK


# -- check ------------------------------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace, out: Out) -> int:
    from ..sites import PROJECT_FILE, load_site, load_site_file, misnamed_site_files, read_project, site_names
    from ..sites.schema import validate
    from ..sites.source import Source

    results: List[Dict[str, str]] = []
    if args.files:
        for path in args.files:
            try:
                if os.path.basename(path) == PROJECT_FILE:
                    data, text = read_project(path)
                    for name, table in data.get("sites", {}).items():
                        validate(table, Source(path, text, prefix=("sites", name)))
                    summary = f"project file, {len(data.get('sites', {}))} site table(s)"
                else:
                    site = load_site_file(path)
                    summary = _summary(site)
                results.append({"what": path, "ok": "true", "detail": summary})
            except HpcBridgeError as exc:
                results.append({"what": path, "ok": "false", "detail": str(exc)})
    else:
        try:
            names = list(site_names())
            results.extend({"what": "site search", "ok": "false", "detail": m} for m in misnamed_site_files())
        except ConfigError as exc:
            names = []
            results.append({"what": "site search", "ok": "false", "detail": str(exc)})
        for name in names:
            try:
                results.append({"what": name, "ok": "true", "detail": _summary(load_site(name))})
            except HpcBridgeError as exc:
                results.append({"what": name, "ok": "false", "detail": str(exc)})
    bad = [r for r in results if r["ok"] != "true"]
    if out.json_mode:
        out.json([{**r, "ok": r["ok"] == "true"} for r in results])
    else:
        for r in results:
            if r["ok"] == "true":
                if out.tty:
                    out.console.print(f"[green]ok[/green]  {r['what']}: {r['detail']}")
                else:
                    out.line(f"ok\t{r['what']}\t{r['detail']}")
            else:
                report(r["detail"], "")
        if bad:
            print("hint: docs/site-configs.md lists every key and its type", file=sys.stderr)
    return USAGE if bad else OK


def _summary(site: Any) -> str:
    parts = [site.scheduler + (f"/{site.flavour}" if site.flavour else ""), _transport(site)]
    if site.partitions:
        parts.append(f"partitions {', '.join(site.partitions)}")
    parts.append(f"{len(site.origin)} layer(s)")
    return ", ".join(parts)


def _transport(site: Any) -> str:
    """``transport local``, or the SSH endpoint as ~/.ssh/config resolves it (nothing is connected): a config it
    cannot use (a ProxyCommand, a missing config_file) fails the check, as it would fail the first job."""
    if site.transport != "ssh":
        return f"transport {site.transport}"
    try:
        from ..transport.ssh import host_spec
    except ImportError:
        return "transport ssh (~/.ssh/config not read: pip install 'hpcbridge[ssh]' for the ssh transport)"
    return f"transport ssh to {host_spec(site.ssh, site_name=site.name).label}"


# -- discover ---------------------------------------------------------------------------------------------------
def cmd_discover(args: argparse.Namespace, out: Out) -> int:
    from ..discover import discover
    from ..sites import builtin_local, load_site, load_site_file
    from ..transport import make_transport

    if args.output and os.path.exists(args.output) and not args.force:
        raise CliError(f"{args.output} exists", "pass --force to overwrite it, or pick another -o FILE")
    if args.via:
        via = load_site(args.via)
        python = args.python or via.python
        source = f"site {args.via!r}"
    else:
        via = builtin_local()
        python = args.python or sys.executable
        source = "this machine"
    transport = make_transport(via)
    name = args.name or (os.path.splitext(os.path.basename(args.output))[0] if args.output else None)
    text = discover(transport, name, python, source)
    if not args.output:
        sys.stdout.write(text)
        return OK
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, args.output)
    site = load_site_file(args.output)
    print(f"wrote {args.output} (site {site.name!r}: {_summary(site)}); review it, then "
          f"`hpcbridge sites check {args.output}`", file=sys.stderr)
    return OK
