"""Who answers SSH's questions (passphrases, keyboard-interactive). No network."""

from __future__ import annotations

import pytest

from hpcbridge.transport.ssh import auth


def test_prompt_without_a_terminal_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcbridge.errors import AuthenticationError

    class NoTTY:
        def isatty(self) -> bool:
            return False

    monkeypatch.setattr("sys.stdin", NoTTY())
    monkeypatch.delitem(__import__("sys").modules, "ipykernel", raising=False)
    auth.set_prompt(None)
    with pytest.raises(AuthenticationError, match="no terminal to answer it; load the key into ssh-agent"):
        auth._ask("Passphrase for key ~/.ssh/id: ", False)
    answers = []
    auth.set_prompt(lambda text, echo: answers.append((text, echo)) or "secret")
    try:
        assert auth._ask("Code: ", True) == "secret" and answers == [("Code: ", True)]
    finally:
        auth.set_prompt(None)
