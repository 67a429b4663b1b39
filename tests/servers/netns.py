"""Network namespaces joined to this host by veth pairs, to cut a link silently (needs root and `ip`).

Each :class:`NetNs` is one namespace with one veth pair: the host side ``host_ip``/30,
the namespace side ``ns_ip``/30, in 198.18.0.0/15 (the range set aside for network
tests, RFC 2544). The namespace has a loopback and that one link, and no default
route: from inside, only the host side is reachable.

:meth:`NetNs.cut` points each side's neighbour entry for the other at a MAC address
nobody has. The link stays up and every route stays; frames still go out, and the
other end drops them (not addressed to it). Nothing answers, nothing is reset, no
error reaches either side: an established connection just goes quiet, as behind a
failed switch or a firewall that drops. :meth:`NetNs.heal` removes the entries.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

NOBODY = "02:00:5e:00:53:01"  # a locally administered MAC address no interface here has


def _ip(*args: str, ns: str = "") -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
    return res


def require_netns() -> None:
    """Skip (fail in CI) unless this process may make network namespaces: root and `ip`."""
    why = ""
    if shutil.which("ip") is None:
        why = "the `ip` tool (apt-get install iproute2)"
    elif os.geteuid() != 0:
        why = "root (network namespaces and veth pairs)"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"{why} is required in CI", pytrace=False)
        pytest.skip(f"needs {why}")


class NetNs:
    """One namespace and its veth pair. Use as a context manager, or :meth:`create` / :meth:`delete`."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"custos-{tag}"
        self.host_if = f"cst{tag}h"  # interface names: at most 15 characters
        self.ns_if = f"cst{tag}n"
        self.subnet = ""
        self.host_ip = ""
        self.ns_ip = ""

    def _pick_subnet(self) -> None:
        taken = _ip("-4", "route", "show", "table", "all").stdout
        rng = random.Random()
        for _ in range(64):
            b, c, d = rng.choice((18, 19)), rng.randrange(256), rng.randrange(64) * 4
            if f"198.{b}.{c}.{d}/30" not in taken:
                self.subnet = f"198.{b}.{c}.{d}/30"
                self.host_ip, self.ns_ip = f"198.{b}.{c}.{d + 1}", f"198.{b}.{c}.{d + 2}"
                return
        raise RuntimeError("no free /30 in 198.18.0.0/15")

    def create(self) -> NetNs:
        """Make the namespace, the pair and the addresses. Raises RuntimeError."""
        self._pick_subnet()
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            _ip("link", "set", "lo", "up", ns=self.name)
            _ip("addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if, ns=self.name)
            _ip("link", "set", self.ns_if, "up", ns=self.name)
        except BaseException:
            self.delete()
            raise
        return self

    def resolve(self, names: dict[str, Sequence[str]]) -> None:
        """Names for programs in the namespace only: `ip netns exec` mounts
        /etc/netns/NAME/hosts over /etc/hosts. A name may have several addresses."""
        d = Path("/etc/netns") / self.name
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts").write_text("127.0.0.1 localhost\n" + "".join(
            f"{ip} {name}\n" for name, ips in names.items() for ip in ips))

    def wrap(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def cut(self) -> None:
        """Drop everything on the link, in both directions, silently (see the module docstring)."""
        _ip("neigh", "replace", self.ns_ip, "lladdr", NOBODY, "dev", self.host_if, "nud", "permanent")
        _ip("neigh", "replace", self.host_ip, "lladdr", NOBODY, "dev", self.ns_if, "nud", "permanent", ns=self.name)

    def heal(self) -> None:
        _ip("neigh", "del", self.ns_ip, "dev", self.host_if)
        _ip("neigh", "del", self.host_ip, "dev", self.ns_if, ns=self.name)

    def delete(self) -> None:
        """Remove the namespace (its end of the pair goes with it, and so the pair) and the
        hosts file. Never raises."""
        for cmd in (["netns", "del", self.name], ["link", "del", self.host_if]):
            subprocess.run(["ip", *cmd], capture_output=True, timeout=30, check=False)
        shutil.rmtree(Path("/etc/netns") / self.name, ignore_errors=True)

    def __enter__(self) -> NetNs:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()
