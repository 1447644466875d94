"""A daemon's owner token: who holds the node's lock, as operators read it (``mailboxctl
status``, the lock key and the ``daemons`` hash in Redis), and what a standby needs to tell
whether the holder's process is gone without waiting out the lease.

The form, with an example::

    <host>:pid=<pid>:boot=<boot id>:pidns=<pid namespace>:<nonce>
    lsp:pid=4242:boot=6d99225f-4e40-4455-b4d4-716804352b54:pidns=4026531836:1c0ffee5

A pid means something only within one boot of one kernel and one pid namespace: docker
containers (``network_mode: host``, or one ``hostname:``) and Kubernetes pods may share a
host name while each has its own pid namespace, and after a reboot the host is the same but
its pids are not. So the token carries the boot id (``/proc/sys/kernel/random/boot_id``) and
the pid namespace (the inode of ``/proc/self/ns/pid``); where they cannot be read (no
``/proc``, as on macOS) the token says ``unknown`` and no holder is ever judged by its pid
there.

The pid is labelled (``pid=4242``) so that a daemon of the release before, which read the
second field of ``host:pid:nonce`` as a pid when it was all digits, never judges a holder
of this form dead: it waits out the lease, which is always safe.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from dataclasses import dataclass

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
PID_NAMESPACE_PATH = "/proc/self/ns/pid"
UNKNOWN = "unknown"
"""What the token says for a boot id or pid namespace this system does not expose."""

_BOOT_ID = re.compile(r"[0-9a-f-]{8,64}")
_FIELDS_AFTER_HOST = 4


@dataclass(frozen=True)
class ProcessPlace:
    """Where a pid names one process: a host name, a boot of its kernel, a pid namespace
    (None where the system does not say)."""

    host: str
    boot: str | None
    pid_namespace: str | None

    @classmethod
    def current(cls) -> ProcessPlace:
        """This process's place, read now (the host name may change; the boot and the pid
        namespace do not within a process's life)."""
        return cls(socket.gethostname(), read_boot_id(), read_pid_namespace())


@dataclass(frozen=True)
class OwnerToken:
    host: str
    pid: int
    boot: str
    """The boot id, or :data:`UNKNOWN`."""
    pid_namespace: str
    """The pid namespace's inode number, or :data:`UNKNOWN`."""
    nonce: str

    @classmethod
    def new(cls) -> OwnerToken:
        """A fresh token for this process."""
        place = ProcessPlace.current()
        return cls(
            host=place.host,
            pid=os.getpid(),
            boot=place.boot or UNKNOWN,
            pid_namespace=place.pid_namespace or UNKNOWN,
            nonce=uuid.uuid4().hex[:8],
        )

    def __str__(self) -> str:
        return (
            f"{self.host}:pid={self.pid}:boot={self.boot}:pidns={self.pid_namespace}:{self.nonce}"
        )

    @classmethod
    def parse(cls, text: str) -> OwnerToken | None:
        """The token in ``text``; None for any other form (the release before's
        ``host:pid:nonce`` among them)."""
        # From the right, so that a host name with a colon in it still parses.
        parts = text.rsplit(":", _FIELDS_AFTER_HOST)
        if len(parts) != _FIELDS_AFTER_HOST + 1:
            return None
        host, pid_field, boot_field, pid_namespace_field, nonce = parts
        pid = _labelled(pid_field, "pid")
        boot = _labelled(boot_field, "boot")
        pid_namespace = _labelled(pid_namespace_field, "pidns")
        if pid is None or boot is None or pid_namespace is None or not _is_pid(pid):
            return None
        return cls(host, int(pid), boot, pid_namespace, nonce)

    def shares_pids_with(self, place: ProcessPlace) -> bool:
        """Whether this token's pid names a process in ``place``'s pid numbering: same host,
        same boot, same pid namespace, all of them known."""
        if place.boot is None or place.pid_namespace is None:
            return False
        return (self.host, self.boot, self.pid_namespace) == (
            place.host,
            place.boot,
            place.pid_namespace,
        )


def new_owner() -> str:
    """A daemon's token (see the module's doc for its form)."""
    return str(OwnerToken.new())


def read_boot_id() -> str | None:
    """The kernel's boot id, or None where the system has none to read."""
    try:
        with open(BOOT_ID_PATH, encoding="ascii") as f:
            boot = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return boot if _BOOT_ID.fullmatch(boot) else None


def read_pid_namespace() -> str | None:
    """This process's pid namespace (its inode number, which names it while it exists),
    or None where the system does not expose it."""
    try:
        return str(os.stat(PID_NAMESPACE_PATH).st_ino)
    except OSError:
        return None


def _labelled(field: str, label: str) -> str | None:
    name, equals, value = field.partition("=")
    return value if equals and name == label and value else None


def _is_pid(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) > 0
