"""The SSH transport's one-line messages: what went wrong, and the command that fixes it."""

from __future__ import annotations

import os
import shlex
from typing import Iterable, Sequence

from .config import DEFAULT_PORT, HostSpec


def keyscan_hint(spec: HostSpec, key_type: str) -> str:
    """The exact command that trusts a host's key once its fingerprint has been checked."""
    shown = short(spec.known_hosts[0]) if spec.known_hosts else "~/.ssh/known_hosts"
    if spec.jumps:
        jump = ",".join(_hop(j) for j in spec.jumps)
        opts = f"-o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={shown}"
        port = f" -p {spec.port}" if spec.port != DEFAULT_PORT else ""
        return f"ssh {opts} -J {jump}{port} {spec.user}@{spec.hostname} true"
    kt = _keyscan_type(key_type)
    port = f" -p {spec.port}" if spec.port != DEFAULT_PORT else ""
    alias = f" # then add {spec.host_key_alias!r} in front" if spec.host_key_alias else ""
    return f"ssh-keyscan -t {kt}{port} {spec.hostname} >> {shown}{alias}"


def _hop(j: HostSpec) -> str:
    port = f":{j.port}" if j.port != DEFAULT_PORT else ""
    return f"{j.user}@{j.hostname}{port}"


def _keyscan_type(key_type: str) -> str:
    kt = key_type.lower()
    if "ed25519" in kt:
        return "ed25519"
    if "ecdsa" in kt:
        return "ecdsa"
    if "rsa" in kt:
        return "rsa"
    return kt


def unknown_host_message(spec: HostSpec, key_type: str, fingerprint: str, files: Iterable[str]) -> str:
    where = ", ".join(files) or "no known_hosts file"
    return (
        f"host key of {spec.label} is not known ({key_type} {fingerprint}; looked in {where}); "
        f"check that fingerprint with the cluster's admins, then trust it with: {keyscan_hint(spec, key_type)}"
    )


def changed_host_message(spec: HostSpec, key_type: str, fingerprint: str, known: str, where: str) -> str:
    return (
        f"WARNING: HOST KEY OF {spec.label} HAS CHANGED: it now sends {key_type} {fingerprint}, {where} holds "
        f"{known}; this can be a man-in-the-middle attack, so nothing was sent. If the cluster's admins confirm a "
        f"new key, remove the old one with: ssh-keygen -R {shlex.quote(spec.known_hosts_name)}"
        + (f" -f {spec.known_hosts[0]}" if spec.known_hosts else "")
        + " and connect again"
    )


def unreachable_message(spec: HostSpec, reason: str, via: str = "") -> str:
    target = f"{spec.hostname}:{spec.port}"
    hint = (
        "check the host name, your network or VPN, and `ssh " + spec.alias + " true`; "
        "a login node behind a bastion needs [ssh] proxy_jump (or ProxyJump in ~/.ssh/config)"
    )
    return f"cannot reach {spec.alias} at {target}{via}: {reason}; {hint}"


def auth_message(spec: HostSpec, tried: Sequence[str], allowed: Sequence[str]) -> str:
    methods = f"; the server allows: {', '.join(allowed)}" if allowed else ""
    what = ", ".join(tried) if tried else "no key (no ssh-agent keys, no identity file)"
    key = short(spec.identity_files[0]) if spec.identity_files else "~/.ssh/id_ed25519"
    return (
        f"{spec.user}@{spec.hostname}:{spec.port} refused the login (tried {what}{methods}); "
        f"put your public key in ~/.ssh/authorized_keys there (ssh-copy-id -i {key}.pub "
        f"{spec.user}@{spec.alias}), load it into ssh-agent (ssh-add {key}), or set [ssh] user / identity_file"
    )


def short(path: str) -> str:
    """``/home/me/.ssh/id`` -> ``~/.ssh/id`` (for messages)."""
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if home not in ("", "/") and path.startswith(home + "/") else path


def fmt_bytes(data: bytes, limit: int = 300) -> str:
    """Output for a message: decoded, stripped, its last ``limit`` characters."""
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else "..." + text[-limit:]
