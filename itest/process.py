"""Child processes of the itest: each in its own process group, its output in a log file.

Every started :class:`Process` (and every other child that calls :func:`register`, such as
itest/ldknode.py's LDK wallets) is registered until it is stopped, and an ``atexit`` hook
kills whatever a crashed fixture left behind, so a failing or interrupted run never leaves
lnd, btcd, an LDK wallet or the mailbox daemon running.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol


class Child(Protocol):
    """Anything running a child process that :meth:`kill` ends at once."""

    def kill(self) -> None: ...


_RUNNING: dict[int, Child] = {}


def register(pid: int, child: Child) -> None:
    """Kill ``child`` at exit unless :func:`unregister` was called for ``pid`` first."""
    _RUNNING[pid] = child


def unregister(pid: int) -> None:
    _RUNNING.pop(pid, None)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of the log at ``path`` ("" when it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ProcessError(Exception):
    """A child process did not start, answer or stop as expected; the message says where its log is."""


class Process:
    """One long-running child: started with :meth:`start`, stopped with :meth:`stop`."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.running:
            raise ProcessError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        register(self._popen.pid, self)

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode if self._popen is not None else None

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def check_alive(self) -> None:
        """Raises with the log's tail when the process has exited."""
        if self._popen is not None and self._popen.poll() is not None:
            raise ProcessError(
                f"{self.name} exited with code {self._popen.returncode}; log {self.log_path}:\n"
                f"{self.log_tail()}"
            )

    def signal(self, sig: int) -> None:
        if self._popen is not None and self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._popen.pid, sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the whole process group, SIGKILL after ``timeout``; returns the exit code."""
        popen = self._popen
        if popen is None:
            return None
        try:
            if popen.poll() is None:
                self.signal(signal.SIGTERM)
                try:
                    popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.signal(signal.SIGKILL)
                    popen.wait()
            # Grandchildren left in the group (none expected) go too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
        finally:
            unregister(popen.pid)
        with self.log_path.open("ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} exit code {popen.returncode}\n".encode())
        return popen.returncode

    def kill(self) -> None:
        """SIGKILL, no chance to clean up: a crash."""
        if self._popen is not None:
            self.signal(signal.SIGKILL)
            self._popen.wait()
            unregister(self._popen.pid)


def wait_for(
    what: str,
    check: Callable[[], object],
    *,
    timeout: float,
    interval: float = 0.2,
    alive: Sequence[Process] = (),
    retry_on: tuple[type[Exception], ...] = (Exception,),
) -> None:
    """Polls ``check()`` (a callable returning truthy) until it holds; raises after ``timeout``.

    Any process in ``alive`` that dies meanwhile ends the wait at once with its log tail.
    Exceptions of ``retry_on`` types count as "not yet"; others propagate.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        for process in alive:
            process.check_alive()
        try:
            if check():
                return
        except retry_on as e:  # the condition may fail while things come up
            last_error = e
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise ProcessError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


@atexit.register
def _kill_leftovers() -> None:
    for child in list(_RUNNING.values()):
        child.kill()
