"""Who the account is (a hash, never the key) and who a holder is."""

from __future__ import annotations

import hashlib
import os
import socket
from typing import Any

from ..secrets import Secret

_DOMAIN = b"vance-account-v1\x00"


def reveal(api_key: Any) -> str:
    """The key's text from a ``str``, our :class:`~vance_provider.core.secrets.Secret` or a pydantic
    ``SecretStr`` (anything with ``get_secret_value()`` or ``reveal()``)."""
    if isinstance(api_key, str):
        return api_key
    for method in ("get_secret_value", "reveal"):
        getter = getattr(api_key, method, None)
        if callable(getter):
            return str(getter())
    raise TypeError("api_key must be a str, a Secret or a pydantic SecretStr")


def account_id(api_base_url: str, api_key: Any) -> str:
    """The account's id in the store: a SHA-256 of the API's base URL and the key (32 hex
    characters), so the key never appears in a store key, a file, a log or a repr, and two keys
    (or one key on two services) never share state."""
    key = reveal(api_key)
    Secret(key)  # the key is now redacted from this package's log records, whatever logs it
    base = api_base_url.strip().rstrip("/").lower()
    digest = hashlib.sha256(_DOMAIN + base.encode() + b"\x00" + key.encode())
    return digest.hexdigest()[:32]


def default_holder() -> str:
    """``host:pid``: who holds a slot or a reservation, as reports show it."""
    return f"{socket.gethostname()}:{os.getpid()}"
