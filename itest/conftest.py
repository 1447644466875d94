"""Fixtures of the real-lnd integration test (``make itest``).

- The binaries are built (once, into the cache; see itest/build.py) when the session starts,
  outside any test's timeout: a cold build takes far longer than one test may.
- ``network`` is one regtest network per lnd generation (session scope, parametrized), so
  every test runs against both lnd 0.20.x (custom transport) and 0.21.x (native).
- ``redis_server`` is a real Redis per test, ``mailbox`` starts the daemon as a subprocess.
- When a test fails, every log of the session (btcd, the three lnds, the daemon, Redis) is
  copied to a directory under /tmp/lndmailbox-itest-logs/ that the failure report names.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from itest.build import Binaries, BuildError, Generation, ensure_all
from itest.daemon import READY, STANDING_BY, MailboxDaemon
from itest.network import Network
from lndmailbox.store import RedisServer

KEPT_LOGS = Path("/tmp/lndmailbox-itest-logs")
_BINARIES = pytest.StashKey[Binaries]()


def pytest_sessionstart(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    started = time.monotonic()
    try:
        session.config.stash[_BINARIES] = ensure_all()
    except BuildError as e:
        # Say why in one message instead of an internal error's traceback.
        pytest.exit(
            f"cannot build the itest's binaries (btcd, lnd, the LDK program): {e}", returncode=3
        )
    took = time.monotonic() - started
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"itest binaries ready in {took:.1f}s")


@pytest.fixture(scope="session")
def binaries(pytestconfig: pytest.Config) -> Binaries:
    if _BINARIES not in pytestconfig.stash:
        pytestconfig.stash[_BINARIES] = ensure_all()
    return pytestconfig.stash[_BINARIES]


@pytest.fixture(
    scope="session",
    params=[Generation.CUSTOM, Generation.NATIVE],
    ids=lambda g: f"lnd{g.value}",
)
def network(
    request: pytest.FixtureRequest, binaries: Binaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Network]:
    generation: Generation = request.param
    net = Network(binaries, generation, tmp_path_factory.mktemp(f"net-{generation.value}"))
    try:
        net.start()
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"\nregtest network for lnd {binaries.lnd[generation].version} up: {net.timings}"
            )
        yield net
    finally:
        net.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mailbox(
    network: Network, redis_server: RedisServer, tmp_path: Path
) -> Iterator[Callable[..., MailboxDaemon]]:
    """``mailbox(*extra_flags)`` starts the daemon against the LSP; every one is stopped after.
    ``mailbox(*extra_flags, standby=True)`` starts one that waits for ready as a standby."""
    started: list[MailboxDaemon] = []

    def start(*extra: str, standby: bool = False) -> MailboxDaemon:
        daemon = MailboxDaemon(
            network, redis_server.url, tmp_path / f"mailbox-{len(started)}", extra
        )
        started.append(daemon)
        daemon.start(ready=STANDING_BY if standby else READY)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


# Logs kept on failure ---------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.failed:
        return
    # A failed session fixture fails every test that uses it with the same exception: keep
    # its logs once.
    error = call.excinfo.value if call.excinfo is not None else None
    kept = _KEPT.get(id(error)) if error is not None else None
    if kept is None:
        kept = keep_logs(item)
        if error is not None and kept is not None:
            _KEPT[id(error)] = kept
            _KEPT_ERRORS.append(error)  # keeps the id unique while it is a key
    if kept is not None:
        report.sections.append(("itest logs", f"every process's log kept in {kept}"))


_KEPT: dict[int, Path] = {}
_KEPT_ERRORS: list[BaseException] = []


def keep_logs(item: pytest.Item) -> Path | None:
    """Copies every ``*.log`` of this session's temporary tree; returns where they went."""
    factory: pytest.TempPathFactory = item.config._tmp_path_factory  # type: ignore[attr-defined]
    base = factory.getbasetemp()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid)[-120:]
    dest = KEPT_LOGS / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    copied = 0
    for log in base.rglob("*.log"):
        if "data" in log.relative_to(base).parts:
            continue  # databases' own *.log files (btcd's leveldb), not logs
        target = dest / log.relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(log, target)
            copied += 1
        except OSError:
            continue
    return dest if copied else None
