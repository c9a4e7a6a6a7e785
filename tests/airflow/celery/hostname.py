"""``[core] hostname_callable`` for the test workers: the name of the test host the worker runs
on (``VANCE_TEST_HOST``), which task instances record as their ``hostname``."""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("VANCE_TEST_HOST") or socket.getfqdn()
