"""Credentials from the environment or from files, and their redaction.

Secrets never live in configs: a config names the *environment variable* or
*file* that holds them. Every secret read here is registered with a logging
filter and with :func:`redact`, so it cannot reach a log line, an exception
message, a report or a saved config.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import warnings
from pathlib import Path

from graft.errors import GraftError

_SECRETS: set[str] = set()
_LOCK = threading.Lock()
MASK = "***"


class CredentialError(GraftError, RuntimeError):
    """A required credential is missing or unreadable. The message says which and how to set it."""


def register_secret(value: str) -> None:
    if value and len(value) >= 4:
        with _LOCK:
            _SECRETS.add(value)


def redact(text: str) -> str:
    """Replace every registered secret in ``text`` with ``***``."""
    with _LOCK:
        secrets = sorted(_SECRETS, key=len, reverse=True)
    for s in secrets:
        text = text.replace(s, MASK)
    return text


def warn_if_world_readable(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.warn(
            f"credential file {path} is readable by other users (mode {stat.filemode(mode)}); "
            f"run: chmod 600 {path}",
            stacklevel=3,
        )


def read_secret(env_var: str, file_env_var: str | None = None, required: bool = True, what: str = "") -> str | None:
    """Read a secret from ``$env_var``, or from the file named by ``$file_env_var``.

    Returns None when absent and not ``required``; otherwise raises
    :class:`CredentialError` naming both variables.
    """
    value = os.environ.get(env_var)
    if not value and file_env_var and os.environ.get(file_env_var):
        path = Path(os.environ[file_env_var]).expanduser()
        if not path.is_file():
            raise CredentialError(f"{file_env_var} points to {path}, which does not exist")
        warn_if_world_readable(path)
        value = path.read_text().strip()
    if value:
        register_secret(value)
        return value
    if required:
        hint = f" or put it in a file and set {file_env_var}=/path/to/file (chmod 600)" if file_env_var else ""
        raise CredentialError(f"missing credential{' for ' + what if what else ''}: set {env_var}{hint}")
    return None


class RedactingFilter(logging.Filter):
    """Logging filter that masks registered secrets in every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


def install_log_redaction() -> None:
    root = logging.getLogger()
    if not any(isinstance(f, RedactingFilter) for f in root.filters):
        root.addFilter(RedactingFilter())
    for h in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())
