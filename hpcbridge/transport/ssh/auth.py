"""Logging in: ssh-agent keys, identity files (a passphrase asked once), keyboard-interactive (MFA) and password.

Who answers a question is process-wide (:func:`set_prompt`); answers are used once and never stored. A decrypted
key is kept by its connection for reconnects, as ssh-agent would keep it.
"""

from __future__ import annotations

import base64
import functools
import getpass
import logging
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import paramiko

from ...errors import AuthenticationError, HostUnreachableError
from .config import HostSpec
from .messages import auth_message, short, unreachable_message

log = logging.getLogger("hpcbridge")

Prompt = Callable[[str, bool], str]
#: decrypted identity files by path, one cache per connection (never their passphrases)
KeyCache = Dict[str, paramiko.PKey]
_prompt: Optional[Prompt] = None


def set_prompt(prompt: Optional[Prompt]) -> None:
    """Who answers passphrase and keyboard-interactive (MFA) questions: ``prompt(text, echo) -> answer``.

    The default asks on the terminal (or in a Jupyter notebook) and fails with a clear error when there is neither.
    Answers are used once and never stored.
    """
    global _prompt
    _prompt = prompt


def _ask(text: str, echo: bool) -> str:
    if _prompt is not None:
        return _prompt(text, echo)
    interactive = bool(getattr(sys.stdin, "isatty", lambda: False)()) or "ipykernel" in sys.modules
    if not interactive:
        raise AuthenticationError(
            f"SSH asks {text.strip()!r} and there is no terminal to answer it; load the key into ssh-agent "
            "(ssh-add), run once from a terminal or notebook, or set hpcbridge.transport.ssh.set_prompt(fn)"
        )
    return input(text) if echo else getpass.getpass(text)


def authenticate(
    spec: HostSpec,
    t: paramiko.Transport,
    keys: KeyCache,
    on_banner: Optional[Callable[[Optional[bytes]], None]] = None,
) -> str:
    """Log in to ``spec`` over the started ``t``: none, then keys, then keyboard-interactive, then a password.

    Returns how (``"publickey (~/.ssh/id)"`` ...); raises :class:`AuthenticationError` saying what was tried.
    ``on_banner`` gets the server's pre-login banner, read right after the first request (paramiko forgets it with
    the next one).
    """
    user = spec.user
    try:
        t.auth_none(user)
        return "none"
    except paramiko.BadAuthenticationType as exc:
        allowed = list(exc.allowed_types)
    except paramiko.AuthenticationException:
        allowed = ["publickey", "keyboard-interactive", "password"]
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise _closed_during_login(spec, exc) from exc
    finally:
        if on_banner is not None:
            on_banner(t.get_banner())
    tried: List[str] = []
    if "publickey" in allowed:
        for label, load in _key_candidates(spec, keys):
            key = load()
            if key is None:
                continue
            try:
                remaining = t.auth_publickey(user, key)
            except paramiko.BadAuthenticationType as exc:
                allowed = list(exc.allowed_types)
                break
            except paramiko.AuthenticationException:
                tried.append(label)
                continue
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise _closed_during_login(spec, exc) from exc
            tried.append(label)
            if t.is_authenticated():
                return f"publickey ({label})"
            allowed = list(remaining)  # partial success: a second factor follows
            break
    if "keyboard-interactive" in allowed and not t.is_authenticated():
        if _interactive_refused(spec, t):
            tried.append("keyboard-interactive")
        if t.is_authenticated():
            return "keyboard-interactive" if not tried else "publickey + keyboard-interactive"
    if "password" in allowed and not t.is_authenticated() and (_prompt is not None or sys.stdin.isatty()):
        if _password_refused(spec, t):
            tried.append("password")
        if t.is_authenticated():
            return "password"
    raise AuthenticationError(auth_message(spec, tried, allowed))


def _closed_during_login(spec: HostSpec, exc: BaseException) -> HostUnreachableError:
    return HostUnreachableError(unreachable_message(spec, f"the connection closed during login ({exc})"))


def _interactive_refused(spec: HostSpec, t: paramiko.Transport) -> bool:
    """Keyboard-interactive: each of the server's questions asked through the prompt; whether the server refused."""
    problem: List[BaseException] = []

    def handler(title: str, instructions: str, prompts: Sequence[Tuple[str, bool]]) -> List[str]:
        answers: List[str] = []
        try:
            if instructions.strip() and prompts:
                sys.stderr.write(instructions.strip() + "\n")
            for text, echo in prompts:
                answers.append(_ask(f"[{spec.alias}] {text}", echo))
        except BaseException as exc:  # raised in paramiko's thread: keep it for the caller
            problem.append(exc)
            return ["" for _ in prompts]
        return answers

    refused = False
    try:
        t.auth_interactive(spec.user, handler)
    except paramiko.AuthenticationException:
        refused = True
    if problem:
        raise problem[0]
    return refused


def _password_refused(spec: HostSpec, t: paramiko.Transport) -> bool:
    """A password, asked through the prompt and forgotten at once (paramiko's copy too); whether it was refused."""
    password = _ask(f"[{spec.alias}] password for {spec.user}@{spec.hostname}: ", False)
    refused = False
    try:
        t.auth_password(spec.user, password)
    except paramiko.AuthenticationException:
        refused = True
    finally:
        auth_handler: Any = getattr(t, "auth_handler", None)
        if auth_handler is not None:
            auth_handler.password = None  # paramiko keeps it there after the login; never stored
    del password
    return refused


def _key_candidates(spec: HostSpec, keys: KeyCache) -> Iterable[Tuple[str, Callable[[], Optional[paramiko.PKey]]]]:
    """Agent keys (only those matching an IdentityFile under IdentitiesOnly), then the identity files."""
    wanted: Optional[set[bytes]] = None
    if spec.identities_only:
        wanted = set()
        for path in spec.identity_files:
            blob = _public_blob(path)
            if blob is not None:
                wanted.add(blob)
    if spec.agent and os.environ.get("SSH_AUTH_SOCK"):
        try:
            agent_keys = list(paramiko.Agent().get_keys())
        except Exception as exc:  # an agent that does not answer is not fatal
            log.debug("hpcbridge: ssh-agent not usable: %s", exc)
            agent_keys = []
        for akey in agent_keys:
            if wanted is not None and akey.asbytes() not in wanted:
                continue
            yield f"ssh-agent key {akey.fingerprint}", functools.partial(_same, akey)
    for path in spec.identity_files:
        if os.path.exists(path):
            yield short(path), functools.partial(load_key, path, keys)


def load_key(path: str, keys: KeyCache) -> Optional[paramiko.PKey]:
    """An identity file's key (its passphrase asked once, the decrypted key kept in ``keys``); None if unusable."""
    if path in keys:
        return keys[path]
    try:
        try:
            key: paramiko.PKey = paramiko.PKey.from_path(path)
        except TypeError as exc:  # cryptography's way of saying so
            if "password" not in str(exc).lower():
                raise
            raise paramiko.PasswordRequiredException(str(exc)) from None
    except paramiko.PasswordRequiredException:
        passphrase = _ask(f"Passphrase for key {short(path)}: ", False)
        try:
            key = paramiko.PKey.from_path(path, passphrase.encode())  # type: ignore[arg-type,unused-ignore]
        except (paramiko.SSHException, ValueError, TypeError) as exc:
            raise AuthenticationError(
                f"wrong passphrase for {short(path)} ({exc}); try again, or load the key into ssh-agent "
                f"(ssh-add {short(path)})"
            ) from None
        finally:
            del passphrase
        keys[path] = key  # the decrypted key stays in memory for reconnects, like ssh-agent would
    except (paramiko.SSHException, ValueError, OSError, paramiko.pkey.UnknownKeyType) as exc:
        log.warning("hpcbridge: cannot use SSH key %s: %s", path, exc)
        return None
    return key


def _same(key: paramiko.PKey) -> Optional[paramiko.PKey]:
    return key


def _public_blob(path: str) -> Optional[bytes]:
    """The public key blob of an identity file (from its .pub), for IdentitiesOnly matching of agent keys."""
    try:
        with open(path + ".pub", encoding="utf-8") as fh:
            fields = fh.read().split()
        return base64.b64decode(fields[1]) if len(fields) >= 2 else None
    except (OSError, ValueError, IndexError):
        return None
