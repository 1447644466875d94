"""Real Redis deployments for the tests: a Cluster of 3 primaries and 3 replicas, and a
Sentinel group of a primary, a replica and 3 sentinels, each a set of valkey-server
processes on loopback, and the failovers the tests cause in them.

There is no valkey-cli: the cluster is formed with redis-py (ADDSLOTSRANGE, MEET,
REPLICATE). The failover helpers block (they poll the servers): an async test runs them
with ``asyncio.to_thread`` while its own calls go on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from lndmailbox.store import find_server_binary

SLOTS = 16384
SERVICE = "mailbox"
"""The name the sentinels monitor."""

# Short timeouts: a failover takes a few seconds, not the production defaults' 15 to 30.
NODE_TIMEOUT_MS = 1000
DOWN_AFTER_MS = 1000
_STARTUP_TIMEOUT = 30.0
_FAILOVER_TIMEOUT = 60.0


def distinct_ports(count: int) -> list[int]:
    """``count`` different TCP ports on 127.0.0.1 that nothing listens on right now: each
    held bound until all are chosen, since the kernel may hand a port just closed out again
    (two nodes given one port: the second never answers)."""
    with contextlib.ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Polls ``check`` until it holds (errors count as not yet); AssertionError after
    ``timeout`` seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError):
            if check():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Process:
    """One valkey-server (or sentinel) process with its own directory and config file."""

    directory: Path
    port: int
    lines: list[str]
    sentinel: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.directory / ("sentinel.conf" if self.sentinel else "valkey.conf")

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.config_path.exists():  # a sentinel rewrites its file: keep it on restart
            base = [
                "bind 127.0.0.1",
                f"port {self.port}",
                f"dir {self.directory}",
                f"logfile {self.directory / 'server.log'}",
                "daemonize no",
            ]
            self.config_path.write_text("\n".join(base + self.lines) + "\n")
        args = [str(find_server_binary()), str(self.config_path)]
        if self.sentinel:
            args.append("--sentinel")
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(f"port {self.port} to answer", self._answers_or_died, 10.0)

    def _answers_or_died(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            log = self.directory / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else "(no log)"
            raise AssertionError(f"valkey on port {self.port} exited at start:\n{tail}")
        return self.answers()

    def answers(self) -> bool:
        with self.client() as c:
            return c.ping() is True

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2.0, socket_connect_timeout=2.0)

    def kill(self) -> None:
        """SIGKILL: the server dies with whatever it did not replicate."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _info(process: Process, section: str) -> dict[str, object]:
    with process.client() as client:
        found: dict[str, object] = client.info(section)
        return found


class LocalCluster:
    """Three primaries with one replica each (or none), slots split evenly."""

    def __init__(
        self, directory: Path, *, replicas: bool = True, client_ports: list[int] | None = None
    ) -> None:
        """``client_ports``: the ports each node tells clients to use (MOVED, CLUSTER
        SLOTS) instead of its own, for a TLS terminator in front of each."""
        count = 6 if replicas else 3
        self._ids: dict[str, Process] = {}
        ports = distinct_ports(2 * count)
        self.bus_ports = ports[count:]
        self.nodes = [
            Process(
                directory / f"node{i}",
                port,
                [
                    "cluster-enabled yes",
                    # the bus's default, port + 10000, may be past 65535
                    f"cluster-port {self.bus_ports[i]}",
                    f"cluster-config-file {directory / f'node{i}' / 'nodes.conf'}",
                    f"cluster-node-timeout {NODE_TIMEOUT_MS}",
                    # a replica takes over however long its link was down
                    "cluster-replica-validity-factor 0",
                    "appendonly no",
                    'save ""',
                    *([f"cluster-announce-client-port {client_ports[i]}"] if client_ports else []),
                ],
            )
            for i, port in enumerate(ports[:count])
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])
        return f"redis+cluster://{hosts}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        primaries, replicas = self.nodes[:3], self.nodes[3:]
        ids = {}
        for i, node in enumerate(primaries):
            first, last = i * SLOTS // 3, (i + 1) * SLOTS // 3 - 1
            with node.client() as c:
                c.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                ids[node.port] = c.execute_command("CLUSTER", "MYID").decode()
        with primaries[0].client() as c:
            for node, bus in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
                c.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
        for replica, primary in zip(replicas, primaries, strict=False):

            def knows(replica: Process = replica, primary: Process = primary) -> bool:
                with replica.client() as c:
                    return ids[primary.port].encode() in c.execute_command("CLUSTER", "NODES")

            wait_for(f"node {replica.port} to know {primary.port}", knows, _STARTUP_TIMEOUT)
            with replica.client() as c:
                c.execute_command("CLUSTER", "REPLICATE", ids[primary.port])
        self._ids = {self.node_id(n): n for n in self.nodes}  # kept across restarts (nodes.conf)
        self.wait_healthy()

    def wait_healthy(self) -> None:
        """Every running node sees cluster_state:ok, every shard has a primary and a
        replica in sync."""

        def healthy() -> bool:
            running = [n for n in self.nodes if n.running]
            for node in running:
                with node.client() as c:
                    if b"cluster_state:ok" not in c.execute_command("CLUSTER", "INFO"):
                        return False
            roles = [_info(n, "replication") for n in running]
            synced = [r for r in roles if r.get("role") == "slave"]
            return (
                sum(1 for r in roles if r.get("role") == "master") == 3
                and len(synced) == len(running) - 3
                and all(r.get("master_link_status") == "up" for r in synced)
                and all(r.get("master_sync_in_progress") == 0 for r in synced)
            )

        wait_for("the cluster to be healthy", healthy, _STARTUP_TIMEOUT)

    def primary_for(self, key: str) -> Process:
        """The running primary that serves ``key``'s slot now."""
        for node in self.nodes:
            if not node.running:
                continue
            with node.client() as c:
                slot = c.execute_command("CLUSTER", "KEYSLOT", key)
                for first, last, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                    if first <= slot <= last:
                        return self._by_id(primary[2].decode())
        raise AssertionError("no running node")

    def _by_id(self, node_id: str) -> Process:
        """The node of ``node_id`` (by id: the port in CLUSTER SLOTS may be the one the
        node announces to clients)."""
        return self._ids[node_id]

    def primaries(self) -> list[Process]:
        return [
            n for n in self.nodes if n.running and _info(n, "replication").get("role") == "master"
        ]

    def replicas(self) -> list[Process]:
        return [
            n for n in self.nodes if n.running and _info(n, "replication").get("role") == "slave"
        ]

    @staticmethod
    def node_id(node: Process) -> str:
        with node.client() as c:
            found: bytes = c.execute_command("CLUSTER", "MYID")
            return found.decode()

    def begin_moving(self, key: str) -> tuple[Process, Process]:
        """Marks ``key``'s slot as moving from its primary to another (MIGRATING and
        IMPORTING); returns (from, to)."""
        source = self.primary_for(key)
        target = next(n for n in self.primaries() if n is not source)
        with source.client() as c:
            slot = c.execute_command("CLUSTER", "KEYSLOT", key)
        with target.client() as c:
            c.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        with source.client() as c:
            c.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))
        return source, target

    @staticmethod
    def move_keys(source: Process, target: Process, keys: list[bytes]) -> None:
        with source.client() as c:
            c.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)

    def finish_moving(self, key: str, source: Process, target: Process) -> None:
        """Moves the slot's remaining keys and gives the slot to ``target`` on every
        primary; waits until every node agrees."""
        with source.client() as c:
            slot = c.execute_command("CLUSTER", "KEYSLOT", key)
            left = c.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10_000)
        if left:
            self.move_keys(source, target, left)
        owner = self.node_id(target)
        for node in [target, source, *(p for p in self.primaries() if p not in (source, target))]:
            with node.client() as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", owner)
        wait_for(
            f"every node to give slot {slot} to {target.port}",
            lambda: all(
                self._owner_seen_by(n, slot) == target.port for n in self.nodes if n.running
            ),
            _STARTUP_TIMEOUT,
        )

    def _owner_seen_by(self, node: Process, slot: int) -> int | None:
        with node.client() as c:
            for first, last, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if first <= slot <= last:
                    return self._by_id(primary[2].decode()).port
        return None

    def kill_primary(self, key: str) -> Process:
        """SIGKILLs the primary of ``key``'s slot; returns it."""
        old = self.primary_for(key)
        old.kill()
        return old

    def wait_for_failover(self, key: str, old: Process) -> Process:
        """Waits until a replica has taken ``key``'s slot over from ``old`` and the
        cluster is ok again; returns the new primary."""

        def promoted() -> bool:
            new = self.primary_for(key)
            if new is old:
                return False
            with new.client() as c:
                return b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO")

        wait_for(f"a replica to take over from {old.port}", promoted, _FAILOVER_TIMEOUT)
        return self.primary_for(key)

    def restore(self, old: Process) -> None:
        """Brings a killed node back (it rejoins as a replica) and waits until every shard
        has a primary and a replica in sync again."""
        old.start()
        self.wait_healthy()

    def flush(self) -> None:
        for node in self.nodes:
            if node.running and _info(node, "replication").get("role") == "master":
                with node.client() as c:
                    c.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelGroup:
    """A primary, its replica and three sentinels watching them as :data:`SERVICE`."""

    def __init__(self, directory: Path) -> None:
        primary_port, replica_port, *sentinel_ports = distinct_ports(5)
        common = ["appendonly no", 'save ""', "repl-diskless-sync-delay 0"]
        self.servers = [
            Process(directory / "primary", primary_port, common),
            Process(
                directory / "replica",
                replica_port,
                [*common, f"replicaof 127.0.0.1 {primary_port}"],
            ),
        ]
        self.sentinels = [
            Process(
                directory / f"sentinel{i}",
                sentinel_ports[i],
                [
                    f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} 2",
                    f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {SERVICE} 10000",
                    f"sentinel parallel-syncs {SERVICE} 1",
                ],
                sentinel=True,
            )
            for i in range(3)
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        for process in self.servers + self.sentinels:
            process.start()
        self.wait_healthy()

    def primary(self) -> Process:
        """The server the sentinels name as primary now."""
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            with sentinel.client() as c:
                found = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                if found:
                    port = int(found[1])
                    return next(s for s in self.servers if s.port == port)
        raise AssertionError("no sentinel names a primary")

    def wait_healthy(self) -> None:
        """Every sentinel names the same running primary, which every sentinel sees with
        its replica and the other sentinels, and the replica is in sync."""

        def healthy() -> bool:
            primary = self.primary()
            replica = next(s for s in self.servers if s is not primary)
            if not (primary.running and replica.running):
                return False
            if _info(primary, "replication").get("role") != "master":
                return False
            info = _info(replica, "replication")
            if info.get("master_port") != primary.port or info.get("master_link_status") != "up":
                return False
            for sentinel in self.sentinels:
                with sentinel.client() as c:
                    named = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
                    if int(named[1]) != primary.port:
                        return False
                    state = c.sentinel_master(SERVICE)
                    if state["num-slaves"] != 1 or state["num-other-sentinels"] != 2:
                        return False
                    if any(r["is_sdown"] for r in c.sentinel_slaves(SERVICE)):
                        return False
            return True

        wait_for("the sentinel group to be healthy", healthy, _STARTUP_TIMEOUT)

    def replicas(self) -> list[Process]:
        primary = self.primary()
        return [s for s in self.servers if s is not primary and s.running]

    def kill_primary(self) -> Process:
        """SIGKILLs the primary the sentinels name; returns it."""
        old = self.primary()
        old.kill()
        return old

    def wait_for_failover(self, old: Process) -> Process:
        """Waits until the sentinels announce another primary than ``old`` and it has
        taken the role; returns it."""
        wait_for(
            "the sentinels to announce a new primary",
            lambda: (
                self.primary() is not old
                and _info(self.primary(), "replication").get("role") == "master"
            ),
            _FAILOVER_TIMEOUT,
        )
        return self.primary()

    def restore(self, old: Process) -> None:
        """Brings the old primary back as a replica of the new one (what the sentinels
        would tell it, some seconds later) and waits for it to be in sync."""
        old.start()
        with old.client() as c:
            c.execute_command("REPLICAOF", "127.0.0.1", self.primary().port)
        self.wait_healthy()

    def flush(self) -> None:
        with self.primary().client() as c:
            c.flushall()
            c.execute_command("WAIT", 1, 5000)

    def stop(self) -> None:
        for process in self.sentinels + self.servers:
            process.stop()


@contextlib.contextmanager
def running(deployment: LocalCluster | SentinelGroup) -> Iterator[None]:
    """Starts ``deployment`` and stops every process of it whatever happens."""
    try:
        deployment.start()
        yield
    finally:
        deployment.stop()
