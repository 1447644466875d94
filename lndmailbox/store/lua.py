"""The store's Lua scripts: ``lua/*.lua`` (package data), read once and composed here.

Each file opens with a comment block for its reader (KEYS, ARGV, the reply); the program
Redis runs starts at the first line that is not a ``--`` comment. The part that runs a
script registers the composed text with ``redis.register_script`` (which runs it by SHA).

Composition: every script but ``summaries`` (which has flags of its own) starts with a
shebang; ``event.lua`` (one entry of the event stream) comes before every
script that appends events, and ``peer.lua`` (a peer's keys, the record readers, repair
and accounting) before every per-peer script. The scripts that move a mailbox from the old
key layout (``migrate_*``) carry ``no-cluster`` and open with ``migrate.lua``.
"""

from __future__ import annotations

import functools
import logging
from importlib import resources
from typing import Literal, get_args

log = logging.getLogger(__name__)

# The shebang makes Redis refuse a script before it starts when memory is over maxmemory
# (rather than at its first write). The scripts run on Redis Cluster too: every key they
# are given carries the node's hash tag (store/keys.py), so they never cross slots.
SHEBANG = "#!lua\n"
# Scripts Redis runs while it refuses writes for memory. The node lock's touch one small
# key: a daemon that cannot renew its lease would lose the node. ``journal_forget`` only
# deletes: it is how decisions leave the journal, and free memory, while Redis is full.
SHEBANG_ALLOW_OOM = "#!lua flags=allow-oom\n"
_ALLOW_OOM_SCRIPTS = frozenset({"renew_lock", "release_lock", "acquire_lock", "journal_forget"})
# The old key layout only ever lived on one Redis, and one node's old keys span slots.
SHEBANG_NO_CLUSTER = "#!lua flags=no-cluster\n"

PeerScript = Literal[
    "put", "peek", "remove", "delivered", "confirm", "requeue", "attempt", "sweep", "purge"
]
"""The scripts that work on one peer's keys (KEYS = queue, dedup, mail, usage, counters,
events, unconfirmed; ARGV[1] = peer hex): they run after both shared helpers."""

_OtherScript = Literal[
    "summaries",
    "record",
    "renew_lock",
    "release_lock",
    "acquire_lock",
    "journal",
    "journal_forget",
    "daemons",
    "webhook_set",
    "webhook_remove",
    "webhook_prune",
]
MigrationScript = Literal[
    "migrate_decided", "migrate_peer", "migrate_inbox", "migrate_events", "migrate_node"
]
"""The scripts that move a mailbox from the old key layout (store/migrate.py), on one Redis
only."""
Script = PeerScript | _OtherScript | MigrationScript
"""Every script (a file in ``lua/`` that is not a helper)."""

SCRIPTS: tuple[Script, ...] = (
    *get_args(PeerScript),
    *get_args(_OtherScript),
    *get_args(MigrationScript),
)
HELPERS = ("event", "peer", "migrate")
MIGRATION_SCRIPTS = frozenset(get_args(MigrationScript))

_PEER_SCRIPTS = frozenset(get_args(PeerScript))


@functools.cache
def source(name: str) -> str:
    """``lua/<name>.lua`` without its leading comment block."""
    text = resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")
    lines = text.splitlines(keepends=True)
    start = 0
    while start < len(lines) and lines[start].startswith("--"):
        start += 1
    return "".join(lines[start:])


@functools.cache
def program(name: Script) -> str:
    """The text Redis runs for the script ``name``."""
    body = source(name)
    if name == "summaries":
        return body
    if name == "migrate_peer":
        # the current layout's keys first, as every per-peer script has them
        return SHEBANG_NO_CLUSTER + source("event") + source("peer") + source("migrate") + body
    if name in MIGRATION_SCRIPTS:
        return SHEBANG_NO_CLUSTER + source("migrate") + body
    if name in _PEER_SCRIPTS:
        return SHEBANG + source("event") + source("peer") + body
    if name == "record":
        return SHEBANG + source("event") + body
    if name in _ALLOW_OOM_SCRIPTS:
        return SHEBANG_ALLOW_OOM + body
    return SHEBANG + body
