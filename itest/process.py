"""Child processes of the itest: each in its own process group, its output in a log file.

Every started :class:`Process` is registered until it is stopped, and an ``atexit`` hook
kills whatever a crashed fixture left behind, so a failing or interrupted run never leaves
lnd, btcd or the mailbox daemon running.
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

_RUNNING: dict[int, Process] = {}


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
        _RUNNING[self._popen.pid] = self

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
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

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
            _RUNNING.pop(popen.pid, None)
        with self.log_path.open("ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} exit code {popen.returncode}\n".encode())
        return popen.returncode

    def kill(self) -> None:
        """SIGKILL, no chance to clean up: a crash."""
        if self._popen is not None:
            self.signal(signal.SIGKILL)
            self._popen.wait()
            _RUNNING.pop(self._popen.pid, None)


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
    for process in list(_RUNNING.values()):
        process.kill()
