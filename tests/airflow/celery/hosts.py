"""Test hosts on one machine: each a network namespace of its own, joined to this (the host)
namespace by a veth pair on one private bridge, and to nothing else.

::

    with HostNetwork(workers=4) as net:      # as root, where `ip netns` works
        net.address                         # 10.231.<n>.1: the host namespace on the bridge
        net.hosts[0].address                # 10.231.<n>.11: the first test host
        net.hosts[0].wrap([...argv])        # argv run inside that host's namespace

The bridge's subnet is the only route a test host has: it reaches the servers that listen on
``net.address`` (the metadata DB, the broker, the API server, the simulator) and no other
network, the outside world included. Without root or ``ip netns`` the hosts are plain processes
on loopback (``net.isolated`` is False, every address is 127.0.0.1): :func:`probe` says why.

Everything made here carries a random tag in its name, and :meth:`HostNetwork.close` removes
it (deleting a namespace deletes the veth end in it, and so the pair).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from types import TracebackType

LOOPBACK = "127.0.0.1"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def probe() -> str | None:
    """None if network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root: network namespaces need root"
    if not shutil.which("ip"):
        return "no `ip` (iproute2)"
    name = f"vprobe{secrets.token_hex(3)}"
    made = _ip("netns", "add", name, check=False)
    if made.returncode:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


@dataclass
class NetHost:
    name: str  # what the host calls itself (the worker's hostname)
    address: str
    namespace: str | None = None  # None: a plain process on loopback

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run on this host (inside its namespace, when it has one)."""
        if self.namespace is None:
            return argv
        return ["ip", "netns", "exec", self.namespace, *argv]


@dataclass
class HostNetwork:
    workers: int
    isolated: bool = True
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: list[NetHost] = field(default_factory=list)
    address: str = LOOPBACK
    why_not: str | None = None
    _made: list[tuple[str, str]] = field(default_factory=list)  # ("netns"|"link", name)

    def __post_init__(self) -> None:
        if self.isolated:
            self.why_not = probe()
            self.isolated = self.why_not is None

    @property
    def subnet(self) -> str:
        # One /24 per network, from the tag: two test sessions side by side do not collide.
        return f"10.231.{int(self.tag, 16) % 250 + 1}"

    def __enter__(self) -> HostNetwork:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        if not self.isolated:
            self.hosts = [NetHost(f"worker-{i + 1}", LOOPBACK) for i in range(self.workers)]
            return
        bridge = f"vbr{self.tag}"
        _ip("link", "add", bridge, "type", "bridge")
        self._made.append(("link", bridge))
        self.address = f"{self.subnet}.1"
        _ip("addr", "add", f"{self.address}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i in range(self.workers):
            ns, outside, inside = f"vw{i + 1}{self.tag}", f"vh{i + 1}{self.tag}", f"vn{i + 1}{self.tag}"
            _ip("netns", "add", ns)
            self._made.append(("netns", ns))
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            self._made.append(("link", outside))
            _ip("link", "set", inside, "netns", ns)
            _ip("link", "set", outside, "master", bridge)
            _ip("link", "set", outside, "up")
            address = f"{self.subnet}.{11 + i}"
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            # No default route: the bridge's /24 (the host namespace) is all a test host reaches.
            self.hosts.append(NetHost(f"worker-{i + 1}", address, ns))

    def routes(self, host: NetHost) -> list[str]:
        """The routes a test host has (for the test to show it reaches nothing else)."""
        if host.namespace is None:
            return []
        return [line for line in _ip("-n", host.namespace, "route", "show").stdout.splitlines() if line]

    def close(self) -> None:
        for kind, name in reversed(self._made):
            if kind == "netns":
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)
        self._made.clear()
