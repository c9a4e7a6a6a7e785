"""Keep tokens out of reprs and logs."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

_known: set[str] = set()
_lock = threading.Lock()


class Secret:
    """A string that never shows itself in ``repr``/``str``; ``reveal()`` when sending it.

    The value (or, for a URL with a password in it, only the ``parts`` given: its passwords) is
    redacted from this package's log records and errors from then on."""

    __slots__ = ("_value",)

    def __init__(self, value: str, parts: Iterable[str] | None = None) -> None:
        self._value = value
        forms = {form for part in ([value] if parts is None else parts) if part for form in encodings(part)}
        with _lock:
            _known.update(forms)
        _install_filter()

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), text)


def encodings(value: str) -> set[str]:
    """Every form in which the client may write ``value``: as is, percent-encoded as a query
    string or a form body does it (``+`` -> ``%2B``, ``/`` -> ``%2F``, ``=`` -> ``%3D``, space ->
    ``+`` or ``%20``, upper- or lower-case hex), and escaped inside JSON."""
    forms = {
        value,
        quote(value, safe=""),
        quote(value, safe="/"),
        quote(value, safe="/="),
        quote_plus(value, safe=""),
        quote_plus(value, safe="/"),
        quote_plus(value, safe="/="),
        json.dumps(value)[1:-1],
        json.dumps(value)[1:-1].replace("/", "\\/"),
    }
    forms |= {_lower_hex(f) for f in forms}
    return {f for f in forms if f}


def redact(text: str) -> str:
    """Replace every known token, in any of its encodings, in ``text`` with ``***``."""
    with _lock:
        secrets = sorted(_known, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, "***")
    return text


class RedactingFilter(logging.Filter):
    """Scrubs tokens from records of the HTTP libraries (their debug logs print URLs and headers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_installed = False


def _install_filter() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    f = RedactingFilter()
    for name in ("httpx", "httpcore", "httpcore.http11", "httpcore.connection", "vance_provider"):
        logging.getLogger(name).addFilter(f)


# Keys of storage options (fsspec, s3fs, gcsfs, adlfs, botocore) whose values are credentials.
_SECRET_KEY = re.compile(
    r"secret|token|password|passwd|credential|private|session|signature|sas|account_key|"
    r"connection_string|^key$|access_key|api_key|auth",
    re.I,
)


def redact_url(url: str) -> str:
    """``url`` without the password of a ``scheme://user:password@host`` part (``user:***@``),
    and known tokens redacted."""
    text = re.sub(r"(?<=://)([^/@:\s]*):([^/@\s]*)@", r"\1:***@", str(url))
    return redact(text)


def redact_options(value: object, key: str = "") -> object:
    """A copy of storage options fit for a repr: every credential's value is ``'***'`` (at any
    depth: ``client_kwargs``, ``config_kwargs``), URLs lose their passwords, known tokens go."""
    if isinstance(value, dict):
        return {k: redact_options(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_options(v, key) for v in value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if key and _SECRET_KEY.search(key):
        return "***"
    if isinstance(value, str):
        return redact_url(value)
    return f"<{type(value).__name__}>"  # an object (a session, a credentials provider): not shown
