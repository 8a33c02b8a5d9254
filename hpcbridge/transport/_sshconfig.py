"""Pure parts of the SSH transport: where to connect (site [ssh] table + ~/.ssh/config), remote command lines,
output framing, and the one-line error messages. No sockets here (tests/unit/test_ssh_config.py).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..errors import ConfigError

DEFAULT_PORT = 22
DEFAULT_CONNECT_TIMEOUT_S = 15.0
DEFAULT_KEEPALIVE_S = 30.0
#: OpenSSH's default identities, tried in this order when nothing names one
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
MAX_JUMPS = 8

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


@dataclasses.dataclass(frozen=True)
class HostSpec:
    """One SSH endpoint, fully resolved (site-config over ~/.ssh/config over OpenSSH defaults)."""

    alias: str  # the name the site-config (or a ProxyJump) used
    hostname: str  # what is connected to (HostName)
    user: str
    port: int = DEFAULT_PORT
    identity_files: Tuple[str, ...] = ()  # expanded paths, in the order they are tried
    identities_only: bool = False
    jumps: Tuple[HostSpec, ...] = ()  # bastions, outermost (first connected) first
    known_hosts: Tuple[str, ...] = ()  # user files, expanded; the first one is where accepted keys are added
    global_known_hosts: Tuple[str, ...] = ()
    strict_host_key_checking: str = "yes"  # yes | accept-new | no
    host_key_alias: str = ""
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    keepalive_s: float = DEFAULT_KEEPALIVE_S
    agent: bool = True  # use keys held by ssh-agent (IdentityAgent none turns it off)

    @property
    def key(self) -> Tuple[Any, ...]:
        """What identifies one shared connection: the same endpoint through the same bastions as the same user."""
        return (self.hostname, self.user, self.port, tuple(j.key for j in self.jumps))

    @property
    def known_hosts_name(self) -> str:
        """The name this host's key is filed under in known_hosts (OpenSSH: ``[host]:port`` off port 22)."""
        name = self.host_key_alias or self.hostname
        return name if self.port == DEFAULT_PORT else f"[{name}]:{self.port}"

    @property
    def label(self) -> str:
        """``alias (user@hostname:port via bastion)`` for messages."""
        where = f"{self.user}@{self.hostname}:{self.port}"
        if self.jumps:
            where += " via " + " -> ".join(j.alias for j in self.jumps)
        return f"{self.alias} ({where})" if self.alias != self.hostname else where


# -- ~/.ssh/config ----------------------------------------------------------------------------------------------
def _as_bool(value: Any) -> bool:
    return str(value).strip().lower() in ("yes", "true", "on", "1")


def _strict(value: Any) -> str:
    text = str(value).strip().lower()
    if text in ("accept-new",):
        return "accept-new"
    if text in ("no", "off", "false"):
        return "no"
    return "yes"  # yes, ask (there is no one to ask) and anything unknown: refuse unknown keys


def parse_jump(text: str) -> List[Tuple[str, Optional[str], Optional[int]]]:
    """``"u@a:2222,b"`` or ``ssh://u@a:2222`` -> ``[("a", "u", 2222), ("b", None, None)]``; ``none`` -> []."""
    text = text.strip()
    if not text or text.lower() == "none":
        return []
    out: List[Tuple[str, Optional[str], Optional[int]]] = []
    for part in text.split(","):
        part = part.strip()
        if part.startswith("ssh://"):
            part = part[len("ssh://") :].rstrip("/")
        user: Optional[str] = None
        port: Optional[int] = None
        if "@" in part:
            user, part = part.rsplit("@", 1)
        if part.startswith("["):  # [ipv6]:port
            host, _, rest = part[1:].partition("]")
            if rest.startswith(":"):
                port = _port(rest[1:], text)
        elif part.count(":") == 1:
            host, port_text = part.split(":", 1)
            port = _port(port_text, text)
        else:
            host = part
        if not host or (user is not None and not user):
            raise ConfigError(f"proxy_jump {text!r}: each hop is [user@]host[:port], separated by commas")
        out.append((host, user, port))
    return out


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"proxy_jump {whole!r}: port {text!r} is not a port number")
    return int(text)


def _expand(path: str, home: str) -> str:
    if path == "~":
        return home
    if path.startswith("~/"):
        return os.path.join(home, path[2:])
    return os.path.expanduser(path)


def _files(value: Any, home: str) -> Tuple[str, ...]:
    """A known-hosts list from ssh config (space-separated) or a site value (a string)."""
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else str(value).split()
    return tuple(_expand(str(v), home) for v in items if str(v).lower() != "none")


Lookup = Callable[[str], Mapping[str, Any]]


def config_lookup(config_file: Optional[str], home: str) -> Lookup:
    """``alias -> options`` from an OpenSSH client config (paramiko.SSHConfig); no file: every alias is itself."""
    path = _expand(config_file or "~/.ssh/config", home)
    if not os.path.isfile(path):
        if config_file:
            raise ConfigError(f"ssh config_file {config_file!r} does not exist ({path})")
        return lambda alias: {}
    import paramiko

    try:
        config = paramiko.SSHConfig.from_path(path)
    except Exception as exc:  # paramiko raises bare exceptions for unsupported or broken lines
        raise ConfigError(f"{path}: cannot read this OpenSSH client config: {exc}") from exc

    def lookup(alias: str) -> Mapping[str, Any]:
        return dict(config.lookup(alias))

    return lookup


def resolve(
    ssh: Mapping[str, Any],
    lookup: Lookup,
    *,
    local_user: str,
    home: str,
    site_name: str = "",
) -> HostSpec:
    """The endpoint a site's ``[ssh]`` table names, with ~/.ssh/config applied (site keys win, like ``ssh -o``)."""
    host = str(ssh.get("host") or "").strip()
    if not host:
        raise ConfigError(f"site {site_name!r}: transport = 'ssh' needs [ssh] host = \"login.example.org\"")
    return _resolve_one(
        host,
        user=ssh.get("user"),
        port=ssh.get("port"),
        identity_file=ssh.get("identity_file"),
        proxy_jump=ssh.get("proxy_jump"),
        known_hosts=ssh.get("known_hosts"),
        connect_timeout_s=ssh.get("connect_timeout_s"),
        keepalive_s=ssh.get("keepalive_s"),
        lookup=lookup,
        local_user=local_user,
        home=home,
        seen=(),
    )


def _resolve_one(
    alias: str,
    *,
    user: Any,
    port: Any,
    identity_file: Any,
    proxy_jump: Any,
    known_hosts: Any,
    connect_timeout_s: Any,
    keepalive_s: Any,
    lookup: Lookup,
    local_user: str,
    home: str,
    seen: Tuple[str, ...],
) -> HostSpec:
    if alias in seen or len(seen) > MAX_JUMPS:
        raise ConfigError(f"ProxyJump loop or chain longer than {MAX_JUMPS}: {' -> '.join(seen + (alias,))}")
    cfg = lookup(alias)
    hostname = str(cfg.get("hostname") or alias)
    the_user = str(user or cfg.get("user") or local_user)
    the_port = int(port or cfg.get("port") or DEFAULT_PORT)
    identities: List[str] = []
    if identity_file:
        identities.append(_expand(str(identity_file), home))
    for item in cfg.get("identityfile") or ():
        path = _expand(str(item), home)
        if path not in identities:
            identities.append(path)
    explicit = bool(identities)
    if not explicit:
        identities = [p for p in (_expand(d, home) for d in DEFAULT_IDENTITIES) if os.path.exists(p)]
    user_known = _files(known_hosts, home) or _files(cfg.get("userknownhostsfile"), home) or _files(
        DEFAULT_KNOWN_HOSTS, home
    )
    global_known = _files(cfg.get("globalknownhostsfile"), home) or DEFAULT_GLOBAL_KNOWN_HOSTS
    timeout = connect_timeout_s if connect_timeout_s is not None else cfg.get("connecttimeout")
    keepalive = keepalive_s if keepalive_s is not None else cfg.get("serveraliveinterval")
    jump_text = proxy_jump if proxy_jump is not None else cfg.get("proxyjump")
    jumps: List[HostSpec] = []
    if jump_text:
        # every hop is resolved through ~/.ssh/config too; a hop's own ProxyJump is not followed (as OpenSSH's -J
        # builds the chain from this one list)
        for hop, hop_user, hop_port in parse_jump(str(jump_text)):
            spec = _resolve_one(
                hop,
                user=hop_user,
                port=hop_port,
                identity_file=None,
                proxy_jump="none",
                known_hosts=known_hosts,
                connect_timeout_s=connect_timeout_s,
                keepalive_s=keepalive_s,
                lookup=lookup,
                local_user=local_user,
                home=home,
                seen=seen + (alias,),
            )
            jumps.append(spec)
    agent_setting = str(cfg.get("identityagent") or "").strip().lower()
    return HostSpec(
        alias=alias,
        hostname=hostname,
        user=the_user,
        port=the_port,
        identity_files=tuple(identities),
        identities_only=_as_bool(cfg.get("identitiesonly", "no")),
        jumps=tuple(jumps),
        known_hosts=user_known,
        global_known_hosts=global_known,
        strict_host_key_checking=_strict(cfg.get("stricthostkeychecking", "yes")),
        host_key_alias=str(cfg.get("hostkeyalias") or ""),
        connect_timeout_s=float(timeout) if timeout not in (None, "") else DEFAULT_CONNECT_TIMEOUT_S,
        keepalive_s=float(keepalive) if keepalive not in (None, "") else DEFAULT_KEEPALIVE_S,
        agent=agent_setting != "none",
    )


# -- remote command lines ---------------------------------------------------------------------------------------
def command_line(script: str, args: Sequence[str], marker: str) -> str:
    """The one command line sent in an exec request: ``exec /bin/sh -c SCRIPT hpcbridge ARGS...``.

    The login shell (bash, zsh, csh, fish ...) only parses this line; ``/bin/sh`` runs ``script`` with ``args`` as
    ``"$1" ...``, so every argument is quoted exactly once (``shlex.quote``) and never re-parsed. The script first
    prints ``marker`` on stdout and stderr: whatever the login shell's startup files printed comes before it and is
    cut off (:func:`after_marker`).
    """
    for a in args:
        if "\x00" in a:
            raise ValueError(f"a remote command argument may not contain a NUL byte: {a!r}")
    prefix = f"printf '%s\\n' {marker}; printf '%s\\n' {marker} >&2; "
    words = ["exec", "/bin/sh", "-c", prefix + script, "hpcbridge", *args]
    return " ".join(shlex.quote(w) for w in words)


#: run(argv): optional cd, then the command itself (a missing one is reported in a form we recognise)
RUN_SCRIPT = (
    'if [ "$1" = -C ]; then cd -- "$2" || exit 126; shift 2; else shift 1; fi; '
    'command -v -- "$1" >/dev/null 2>&1 || { printf "hpcbridge: command not found: %s\\n" "$1" >&2; exit 127; }; '
    'exec "$@"'
)
NOT_FOUND = "hpcbridge: command not found: "


def run_args(argv: Sequence[str], env: Optional[Mapping[str, str]], cwd: Optional[str]) -> List[str]:
    """Arguments for :data:`RUN_SCRIPT`: ``-C DIR`` or ``-``, then ``env K=V ...`` when there is an environment."""
    argv = [str(a) for a in argv]
    if not argv or not argv[0]:
        raise ValueError("empty command")
    out = ["-C", cwd] if cwd else ["-"]
    if env:
        bad = [k for k in env if not _ENV_NAME.match(k)]
        if bad:
            raise ValueError(f"environment variable names must be letters, digits and _: {bad}")
        if "=" in argv[0]:
            raise ValueError(f"command name may not contain '=' when an environment is given: {argv[0]!r}")
        out += ["env", *(f"{k}={v}" for k, v in env.items())]
    return out + argv


def after_marker(data: bytes, marker: str) -> Optional[bytes]:
    """What follows the first ``marker`` line (None if the marker never came: the command did not start)."""
    token = marker.encode() + b"\n"
    at = data.find(token)
    if at < 0:
        return None
    return data[at + len(token) :]


def expand_user_arg(path: str) -> Tuple[str, str]:
    """``~`` / ``~/x`` / ``~name/x`` -> (``name`` or ``""``, rest); raise for a user name that is not plain."""
    head, sep, rest = path[1:].partition("/")
    if head and not _USER_NAME.match(head):
        raise ValueError(f"cannot expand {path!r}: {head!r} is not a user name")
    return head, (sep + rest)


def check_remote_path(path: str, what: str) -> None:
    if "\n" in path or "\x00" in path:
        raise ValueError(f"{what}: a path with a newline or NUL byte is not supported: {path!r}")
    if not path.startswith("/"):
        raise ValueError(f"{what}: remote paths must be absolute (expand ~ first): {path!r}")


def umask_for(mode: int) -> str:
    return f"{(~mode) & 0o777:03o}"


# -- messages ---------------------------------------------------------------------------------------------------
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
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else "..." + text[-limit:]
