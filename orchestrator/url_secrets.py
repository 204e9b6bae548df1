"""Passwords in storage URLs: never written, never printed.

A storage URL may carry a password (``postgresql://user:PASSWORD@host/db``). Everything rnnsweep
writes or prints (the sweep record, MLflow tags and params, ``status``, error messages) holds
the URL as ``redact`` gives it, ``postgresql://user:***@host/db``. To connect, ``connectable``
turns a redacted URL back into one that works: the full URL if this process was given it (kept
in memory only), else the URL without a password, for which libpq (psycopg2) reads the password
from ``PGPASSWORD`` or ``~/.pgpass`` and MLflow's HTTP client from ``MLFLOW_TRACKING_PASSWORD``.
``scrub`` removes known passwords from any text (an error message from a driver library).
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED = "***"

_full: dict[str, str] = {}  # redacted URL -> the URL with its password, this process only
_passwords: set[str] = set()
_USERINFO = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@", re.IGNORECASE)


def _netloc(userinfo: str, host: str) -> str:
    return f"{userinfo}@{host}" if userinfo else host


def _split(url: str) -> tuple[str, str | None, str]:
    """``(user, password or None, host[:port])`` of ``url``'s authority."""
    userinfo, at, host = urlsplit(url).netloc.rpartition("@")
    if not at:
        return "", None, host
    user, colon, password = userinfo.partition(":")
    return user, (password if colon else None), host


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (the password is kept in memory for
    ``scrub``). A URL without a password (a SQLite path, ``http://host``) comes back
    unchanged."""
    if not url or "://" not in url:
        return url
    user, password, host = _split(url)
    if password is None or password == REDACTED:
        return url
    _passwords.update({password, unquote(password)})  # as written, and as libraries quote it
    return urlunsplit(urlsplit(url)._replace(netloc=_netloc(f"{user}:{REDACTED}", host)))


def remember(url: str) -> None:
    """Keep ``url`` (in memory, this process only) as what ``connectable`` turns its redacted
    form into: called once a store has been opened with it, so a wrong password is never kept."""
    redacted = redact(url)
    if redacted != url:
        _full[redacted] = url


def connectable(url: str) -> str:
    """A URL to connect with: a redacted URL becomes the full one given to this process, or
    else loses its password (libpq then takes ``PGPASSWORD`` or ``~/.pgpass``); any other URL
    is returned as it is."""
    if not url or "://" not in url:
        return url
    user, password, host = _split(url)
    if password != REDACTED:
        return url
    if url in _full:
        return _full[url]
    return urlunsplit(urlsplit(url)._replace(netloc=_netloc(user, host)))


def without_password(url: str) -> tuple[str, str | None]:
    """``(url without its password, the password unquoted or None)``: for a child process,
    which gets the password in its environment (``PGPASSWORD``), never on its command line."""
    user, password, host = _split(url) if "://" in url else ("", None, "")
    if password is None:
        return url, None
    return urlunsplit(urlsplit(url)._replace(netloc=_netloc(user, host))), unquote(password)


def scrub(text: str) -> str:
    """``text`` with every URL password in it, and every password this process redacted,
    replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['head']}{REDACTED}@", text)
    for password in _passwords:
        if len(password) >= 3:  # a one- or two-letter password would mangle any text
            text = text.replace(password, REDACTED)
    return text
