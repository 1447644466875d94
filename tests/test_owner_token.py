"""The owner token and the judgement that lets a standby take the lock of a dead holder
without waiting out the lease: real processes (a child that exited, this one, a leader in
a pid namespace of its own), real Redis for the takeover itself.

- A token names its host, pid, boot and pid namespace, readable, and parses back; the
  release before's ``host:pid:nonce`` does not parse, and its parser never reads a pid in
  this form.
- Judged dead: only a holder of this host, boot and pid namespace whose pid is gone.
- Never judged dead: this process; a gone pid of another host, boot or pid namespace; the
  old form; any holder where this system exposes no boot id or pid namespace.
- A live leader in another pid namespace of this host (``unshare``, as root), whose pid
  does not exist in ours, is not judged dead.
- The takeover: at once from a gone holder of this place, after the lease otherwise.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest
import redis.asyncio as aioredis

from lndmailbox.daemon import owner_token
from lndmailbox.daemon.node_lock import NodeLock, _died_on_this_host
from lndmailbox.daemon.owner_token import UNKNOWN, OwnerToken, ProcessPlace, new_owner
from lndmailbox.store import Store

NODE = bytes.fromhex("03" + "ef" * 32)
OTHER_BOOT = "00000000-1111-2222-3333-444444444444"


def gone_pid() -> int:
    """The pid of a child that has exited and been reaped: no process has it (the kernel
    hands pids out in turn, so it is not reused this soon)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def here(pid: int) -> OwnerToken:
    """A token of ``pid`` in this process's host, boot and pid namespace."""
    return dataclasses.replace(OwnerToken.new(), pid=pid)


Move = Callable[[OwnerToken], OwnerToken]
ELSEWHERE: dict[str, Move] = {
    "another-boot": lambda token: dataclasses.replace(token, boot=OTHER_BOOT),
    "another-pid-namespace": lambda token: dataclasses.replace(token, pid_namespace="4026530000"),
    "another-host": lambda token: dataclasses.replace(token, host="another-host"),
    "boot-unknown": lambda token: dataclasses.replace(token, boot=UNKNOWN),
    "pid-namespace-unknown": lambda token: dataclasses.replace(token, pid_namespace=UNKNOWN),
}
"""Tokens of another place than this process's, whose pid means nothing here."""


def without_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a system without /proc (macOS)."""
    monkeypatch.setattr(owner_token, "BOOT_ID_PATH", "/nonexistent/boot_id")
    monkeypatch.setattr(owner_token, "PID_NAMESPACE_PATH", "/nonexistent/ns/pid")


# --- the token -------------------------------------------------------------------------------


def test_a_token_names_host_pid_boot_and_pid_namespace_and_parses_back() -> None:
    text = new_owner()
    token = OwnerToken.parse(text)
    assert token is not None
    assert str(token) == text
    assert (token.host, token.pid) == (socket.gethostname(), os.getpid())
    assert token.boot == Path(owner_token.BOOT_ID_PATH).read_text().strip()
    assert token.pid_namespace == str(os.stat("/proc/self/ns/pid").st_ino)
    assert text.startswith(f"{socket.gethostname()}:pid={os.getpid()}:boot={token.boot}:")
    assert len(token.nonce) == 8


def test_the_release_befores_parser_never_reads_a_pid_in_a_token() -> None:
    """It read the second field of ``host:pid:nonce`` as a pid when all digits: a labelled
    pid keeps it from judging a leader of this release (it waits out the lease)."""
    second_field = new_owner().split(":")[1]
    assert not second_field.isdigit()


@pytest.mark.parametrize(
    "text",
    [
        "lsp:4242:1c0ffee5",  # the release before's form
        "lsp:pid=0:boot=b:pidns=1:n",
        "lsp:pid=-3:boot=b:pidns=1:n",
        "lsp:pid=x:boot=b:pidns=1:n",
        "lsp:4242:boot=b:pidns=1:n",
        "lsp:pid=4242:boot=:pidns=1:n",
        "lsp:pid=4242:pidns=1:boot=b:n",
        "",
    ],
)
def test_other_forms_do_not_parse(text: str) -> None:
    assert OwnerToken.parse(text) is None


def test_a_host_name_with_a_colon_still_parses() -> None:
    token = dataclasses.replace(OwnerToken.new(), host="odd:name")
    assert OwnerToken.parse(str(token)) == token


def test_without_proc_the_token_says_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    without_proc(monkeypatch)
    token = OwnerToken.parse(new_owner())
    assert token is not None
    assert (token.boot, token.pid_namespace) == (UNKNOWN, UNKNOWN)
    assert ProcessPlace.current() == ProcessPlace(socket.gethostname(), None, None)


# --- the judgement ---------------------------------------------------------------------------


def test_a_gone_process_of_this_host_boot_and_pid_namespace_is_dead() -> None:
    assert _died_on_this_host(str(here(gone_pid())))


def test_this_process_is_alive() -> None:
    assert not _died_on_this_host(new_owner())
    assert not _died_on_this_host(str(here(os.getpid())))


@pytest.mark.parametrize("move", ELSEWHERE.values(), ids=ELSEWHERE.keys())
def test_a_gone_pid_elsewhere_is_never_judged_dead(move: Move) -> None:
    pid = gone_pid()
    assert _died_on_this_host(str(here(pid))), "the same pid here is judged dead"
    assert not _died_on_this_host(str(move(here(pid))))


def test_the_release_befores_token_is_never_judged_dead() -> None:
    assert not _died_on_this_host(f"{socket.gethostname()}:{gone_pid()}:1c0ffee5")


def test_without_proc_no_holder_is_judged_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither a token written there (``unknown``) nor one naming a real boot and pid
    namespace: without its own, a process cannot tell that a pid is in its numbering."""
    pid = gone_pid()
    with_proc = here(pid)
    without_proc(monkeypatch)
    assert not _died_on_this_host(str(here(pid)))
    assert not _died_on_this_host(str(with_proc))


# --- a leader in a pid namespace of its own ----------------------------------------------------

_LEADER = (
    "import sys; from lndmailbox.daemon.owner_token import new_owner; "
    "print(new_owner(), flush=True); sys.stdin.read()"
)
# Runs as pid 1 of the new namespace: the next pid it hands out is the one asked for, so
# that the leader's pid is one that no process of ours has.
_AT_PID = (
    "import subprocess, sys\n"
    "with open('/proc/sys/kernel/ns_last_pid', 'w') as f: f.write(str(int(sys.argv[1]) - 1))\n"
    "sys.exit(subprocess.call([sys.executable, '-c', sys.argv[2]]))\n"
)
_UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


OPT_OUT = "LNDMAILBOX_TESTS_WITHOUT_PID_NAMESPACES"
"""Set on a machine that cannot make pid namespaces (not root, no unshare(1)) to skip the
one test that needs them; CI sets nothing, so there it runs or fails, never skips."""


def _cannot_make_pid_namespaces(why: str) -> NoReturn:
    if os.environ.get(OPT_OUT):
        pytest.skip(f"{why} ({OPT_OUT} is set)")
    pytest.fail(f"{why}: this test needs them (set {OPT_OUT}=1 to skip it on this machine)")


@pytest.fixture
def pid_namespaces() -> None:
    """Fails (or skips, if opted out) unless this test may make pid namespaces and choose
    pids in them."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        _cannot_make_pid_namespaces("pid namespaces need root and unshare(1)")
    probe = [*_UNSHARE, "sh", "-c", "echo 300 > /proc/sys/kernel/ns_last_pid"]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=10)
    if done.returncode != 0:
        _cannot_make_pid_namespaces(
            f"unshare --pid with a writable ns_last_pid fails: {done.stderr}"
        )


@pytest.mark.usefixtures("pid_namespaces")
def test_a_live_leader_in_another_pid_namespace_of_this_host_is_not_judged_dead() -> None:
    """As two containers with ``network_mode: host``: one host name and boot, two pid
    namespaces, and the leader's pid is gone in ours, which the release before took for a
    dead leader (two leaders at once)."""
    pid = gone_pid()
    leader = subprocess.Popen(
        [*_UNSHARE, sys.executable, "-c", _AT_PID, str(pid), _LEADER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert leader.stdout is not None
        text = leader.stdout.readline().strip()
        token = OwnerToken.parse(text)
        assert token is not None, (text, leader.stderr.read() if leader.stderr else "")
        assert token.pid == pid
        assert (token.host, token.boot) == (here(pid).host, here(pid).boot)
        assert token.pid_namespace != here(pid).pid_namespace
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # what the release before judged by
        assert not _died_on_this_host(text)
    finally:
        leader.communicate(timeout=10)
    assert leader.returncode == 0


# --- the takeover ----------------------------------------------------------------------------


async def test_a_lock_left_by_a_gone_process_here_is_taken_without_waiting_out_the_lease(
    redis_client: aioredis.Redis,
) -> None:
    control = Store(redis_client, NODE).control
    assert await control.acquire_lock(str(here(gone_pid())), lease=30)
    lock = NodeLock(control)
    assert await asyncio.wait_for(lock.acquire(asyncio.Event()), 5)
    assert await control.lock_owner() == lock.owner


HOLDERS_ELSEWHERE: dict[str, Callable[[int], str]] = {
    "another-boot": lambda pid: str(ELSEWHERE["another-boot"](here(pid))),
    "another-pid-namespace": lambda pid: str(ELSEWHERE["another-pid-namespace"](here(pid))),
    "release-before": lambda pid: f"{socket.gethostname()}:{pid}:1c0ffee5",
}


@pytest.mark.parametrize("holder", HOLDERS_ELSEWHERE.values(), ids=HOLDERS_ELSEWHERE.keys())
async def test_a_lock_of_a_gone_pid_elsewhere_is_taken_once_its_lease_runs_out(
    redis_client: aioredis.Redis, holder: Callable[[int], str]
) -> None:
    control = Store(redis_client, NODE).control
    lease = 0.6
    assert await control.acquire_lock(holder(gone_pid()), lease=lease)
    lock = NodeLock(control)
    started = time.monotonic()
    assert await asyncio.wait_for(lock.acquire(asyncio.Event()), 5)
    assert time.monotonic() - started >= lease - 0.1
    assert await control.lock_owner() == lock.owner
