"""The data directory's locks, and what they protect (the embedded Redis, shared by a pair)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from simnet import Personality

from lndmailbox.daemon import run
from lndmailbox.daemon.datadir_lock import DirectoryLock
from lndmailbox.store import embedded_socket_path
from tests.daemon_harness import stored_count, wait_until, world


def test_a_second_holder_is_refused_until_the_first_releases(tmp_path: Path) -> None:
    first, second = DirectoryLock(tmp_path / "lock"), DirectoryLock(tmp_path / "lock")
    assert first.try_acquire()
    assert not second.try_acquire()
    assert second.holder() == str(os.getpid())
    first.release()
    assert second.try_acquire()
    second.release()


def test_a_killed_holder_leaves_the_directory_free(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from lndmailbox.daemon.datadir_lock import DirectoryLock; "
            "assert DirectoryLock(Path(sys.argv[1])).try_acquire(); "
            "print('held', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "held\n"
            lock = DirectoryLock(path)
            assert not lock.try_acquire()
            assert lock.holder() == str(holder.pid)
        finally:
            holder.kill()  # SIGKILL: no chance to release anything
            holder.wait()
    assert lock.try_acquire()
    lock.release()


async def test_a_second_daemon_on_the_same_datadir_shares_the_first_ones_redis(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A second daemon on the directory uses the first one's embedded server (a same-host
    standby) instead of waiting, and its stop leaves the server to the first."""
    caplog.set_level(logging.INFO, logger="lndmailbox")
    socket_url = f"unix://{embedded_socket_path(tmp_path / 'mailbox')}?db=0"
    async with world(Personality.LND_0_20, socket_url, tmp_path) as w:
        await w.start_daemon(redis_url=None)  # the embedded server, in tmp_path/mailbox

        second_stop = asyncio.Event()
        second = asyncio.create_task(run(w.settings, stop=second_stop))
        # (A lone daemon stands by too while its pipeline starts: the second one's lines.)
        await wait_until(
            lambda: (
                caplog.text.count("standing by: journaling") == 2
                and "leads this node; standing by" in caplog.text
            ),
            what="the second daemon to stand by",
        )
        assert "using the embedded Redis another lndmailbox started" in caplog.text
        second_stop.set()
        await asyncio.wait_for(second, 30)
        assert "leaving the embedded Redis to the other lndmailbox" in caplog.text

        # The first daemon's Redis is still there, and the first daemon still keeps mail.
        await w.alice.send_onion_message(w.message_for_bob(b"after the second one left"))
        await stored_count(w, 1)
        assert w.task is not None
        assert not w.task.done()


def test_a_daemon_of_the_release_before_keeps_the_directory_to_itself(tmp_path: Path) -> None:
    """It held ``lndmailbox.lock`` exclusively: a daemon of this release cannot share it."""
    old = DirectoryLock(tmp_path / "lndmailbox.lock")
    assert old.try_acquire()
    assert not DirectoryLock(tmp_path / "lndmailbox.lock").try_acquire(shared=True)
    old.release()
    first = DirectoryLock(tmp_path / "lndmailbox.lock")
    second = DirectoryLock(tmp_path / "lndmailbox.lock")
    assert first.try_acquire(shared=True)
    assert second.try_acquire(shared=True)
    assert not first.try_exclusive(), "another daemon uses it"
    assert second.try_exclusive(), "the last one may stop the server"
    first.release()
    second.release()
