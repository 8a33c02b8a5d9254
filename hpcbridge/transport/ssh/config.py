"""Where to connect: a site's ``[ssh]`` table over ~/.ssh/config over OpenSSH's defaults, resolved into a HostSpec.

No sockets and no paramiko at import: reading ~/.ssh/config is the only thing it does (tests/unit/test_ssh_config.py).
"""

from __future__ import annotations

import dataclasses
import getpass
import os
from typing import Any, Callable, List, Mapping, Optional, Tuple

from ...errors import ConfigError

DEFAULT_PORT = 22
DEFAULT_CONNECT_TIMEOUT_S = 15.0
DEFAULT_KEEPALIVE_S = 30.0
#: OpenSSH's default identities, tried in this order when nothing names one
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
MAX_JUMPS = 8


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
    config_name: str = "~/.ssh/config",
) -> HostSpec:
    """The endpoint a site's ``[ssh]`` table names, with ~/.ssh/config applied (site keys win, like ``ssh -o``).

    A ``ProxyCommand`` the connection would go through is a :class:`ConfigError` (``config_name`` names the file in
    it): hpcbridge runs no local command lines. It goes through none when the site sets ``proxy_jump`` (as ``ssh
    -J`` overrides it) and on a bastion after the first (the one before it connects to it).
    """
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
        config_name=config_name,
        direct=ssh.get("proxy_jump") is None,
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
    config_name: str,
    direct: bool,
) -> HostSpec:
    """``direct``: whether the config decides how ``alias`` is reached, so that a ProxyCommand there would be used
    (refused); not when the site's proxy_jump or the bastion before it does."""
    if alias in seen or len(seen) > MAX_JUMPS:
        raise ConfigError(f"ProxyJump loop or chain longer than {MAX_JUMPS}: {' -> '.join(seen + (alias,))}")
    cfg = lookup(alias)
    if direct:
        _refuse_proxy_command(alias, cfg, config_name, bastion=bool(seen))
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
    if timeout not in (None, "") and float(timeout) <= 0:
        timeout = None  # OpenSSH's ConnectTimeout 0: the system's TCP timeout; a socket timeout of 0 never connects
    keepalive = keepalive_s if keepalive_s is not None else cfg.get("serveraliveinterval")
    jump_text = proxy_jump if proxy_jump is not None else cfg.get("proxyjump")
    jumps: List[HostSpec] = []
    if jump_text:
        # every hop is resolved through ~/.ssh/config too; a hop's own ProxyJump is not followed (as OpenSSH's -J
        # builds the chain from this one list)
        for i, (hop, hop_user, hop_port) in enumerate(parse_jump(str(jump_text))):
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
                config_name=config_name,
                # the first bastion is connected to directly (OpenSSH would run its ProxyCommand); each later
                # one through the bastion before it
                direct=i == 0,
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


def _refuse_proxy_command(alias: str, cfg: Mapping[str, Any], config_name: str, bastion: bool) -> None:
    """A ProxyCommand is a shell command line run locally to carry the connection; hpcbridge connects with
    paramiko and runs no local command lines (argv only, never a shell), so it would be left out: refused."""
    command = str(cfg.get("proxycommand") or "").strip()
    if not command or command.lower() == "none":
        return
    what = f"the bastion {alias}" if bastion else alias
    raise ConfigError(
        f"{config_name} reaches {what} through ProxyCommand {command!r}, which hpcbridge does not run (it connects "
        "with paramiko and runs no local shell commands, docs/ssh.md); reach it through a bastion instead: ProxyJump "
        f"in {config_name}, or proxy_jump = \"[user@]bastion[:port]\" in the site's [ssh] table (which overrides "
        "ProxyCommand, as ssh -J does)"
    )


def host_spec(ssh: Mapping[str, Any], *, site_name: str = "") -> HostSpec:
    """The endpoint a site's ``[ssh]`` table names, resolved against ~/.ssh/config (or its ``config_file``).

    The transport factory calls it, so that :class:`~hpcbridge.transport.ssh.SSHTransport` takes a resolved spec.
    """
    home = os.path.expanduser("~")
    lookup = config_lookup(ssh.get("config_file"), home)
    return resolve(ssh, lookup, local_user=local_user(), home=home, site_name=site_name,
                   config_name=str(ssh.get("config_file") or "~/.ssh/config"))


def local_user() -> str:
    """This machine's user name: the SSH user when neither the site nor ~/.ssh/config names one."""
    try:
        return getpass.getuser()
    except Exception:
        return "root" if os.geteuid() == 0 else str(os.geteuid())
