"""The release before the node's hash tag (commit 77ed6b6, the key layout
``lndmailbox:<node>:peer:{<peer>}:queue``), run for real: its ``lndmailbox`` package taken
from git into a directory, and tests/old_release_fill.py run under it in a subprocess
against the test's Redis. What it writes is what operators' Redis holds today."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from lndmailbox.onion.wire import OnionMessage

OLD_RELEASE = "77ed6b6"
"""The last commit with the old key layout (the release operators run)."""
ROOT = Path(__file__).resolve().parent.parent
FILL = Path(__file__).resolve().parent / "old_release_fill.py"


def extract_old_release(into: Path) -> Path:
    """The old release's ``lndmailbox`` package under ``into`` (which goes on PYTHONPATH).
    Fails, saying why, when the repository does not have the commit (a shallow clone)."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{OLD_RELEASE}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    assert found.returncode == 0, (
        f"commit {OLD_RELEASE} (the release with the old key layout) is not in the git "
        f"repository at {ROOT}: these tests run that release's code to fill a mailbox, so "
        f"they need the history (a full clone, or `git fetch --unshallow`). git said: "
        f"{found.stderr.decode().strip()}"
    )
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", OLD_RELEASE, "lndmailbox"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def hexes(values: list[bytes]) -> list[str]:
    return [v.hex() for v in values]


@dataclasses.dataclass
class OldFill:
    """What the old release writes (see tests/old_release_fill.py)."""

    node: bytes
    now: float
    ttl: int = 3600
    max_messages_per_peer: int = 64
    allow: list[bytes] = dataclasses.field(default_factory=list)
    puts: list[list[dict[str, Any]]] = dataclasses.field(default_factory=list)
    deliver: dict[bytes, int] = dataclasses.field(default_factory=dict)
    counters: dict[str, int] = dataclasses.field(default_factory=dict)
    summary: list[tuple[str, str, bytes, int]] = dataclasses.field(default_factory=list)
    delivery_requests: list[bytes] = dataclasses.field(default_factory=list)
    journal: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    decided: list[str] = dataclasses.field(default_factory=list)
    lock: str | None = None

    def put(self, peer: bytes, sender: bytes, message: OnionMessage, at: float) -> None:
        """One more put of one message (each its own script run)."""
        self.puts.append([self._message(peer, sender, message, at)])

    def put_batch(self, items: list[tuple[bytes, bytes, OnionMessage, float]]) -> None:
        """One put of several messages, for any peers (one script run)."""
        self.puts.append([self._message(*item) for item in items])

    @staticmethod
    def _message(peer: bytes, sender: bytes, message: OnionMessage, at: float) -> dict[str, Any]:
        return {
            "peer": peer.hex(),
            "sender": sender.hex(),
            "path_key": message.path_key.hex(),
            "onion": message.onion.hex(),
            "now": at,
        }

    def journal_entry(
        self, entry: str, sender: bytes, message: OnionMessage, at: float, erd: bytes = b""
    ) -> None:
        self.journal.append(
            {
                "entry": entry,
                "sender": sender.hex(),
                "path_key": message.path_key.hex(),
                "onion": message.onion.hex(),
                "received_at": at,
                "encrypted_recipient_data": erd.hex(),
            }
        )

    def plan(self, redis_url: str) -> dict[str, Any]:
        return {
            "redis_url": redis_url,
            "node": self.node.hex(),
            "now": self.now,
            "ttl": self.ttl,
            "max_messages_per_peer": self.max_messages_per_peer,
            "allow": hexes(self.allow),
            "puts": self.puts,
            "deliver": {peer.hex(): n for peer, n in self.deliver.items()},
            "counters": self.counters,
            "summary": [(k, r, w.hex(), n) for k, r, w, n in self.summary],
            "delivery_requests": hexes(self.delivery_requests),
            "journal": self.journal,
            "decided": self.decided,
            "lock": self.lock,
        }


def run_old_release(code: Path, redis_url: str, fill: OldFill) -> None:
    """Writes ``fill`` to the Redis at ``redis_url`` with the old release's code at ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    done = subprocess.run(
        [sys.executable, str(FILL)],
        input=json.dumps(fill.plan(redis_url)).encode(),
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    ran = json.loads(done.stdout)["lndmailbox"]
    assert Path(ran).is_relative_to(code), f"the fill ran {ran}, not the old release"
