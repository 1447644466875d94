"""The ``lndmailbox`` daemon: its entry point, its composition root and its tasks.

==========================  ==============================================================
module                      holds
==========================  ==============================================================
:mod:`~.entry`              :func:`main` and :func:`run`: settings, signals, exit codes,
                            the embedded Redis, lnd and Redis at start
:mod:`~.datadir_lock`       the data directory's embedded Redis, shared by the daemons of
                            one host (flock)
:mod:`~.node_lock`          one leader per lnd node (a lease in Redis, with a heartbeat)
:mod:`~.owner_token`        a daemon's token in the lock: host, boot, pid namespace, pid
:mod:`~.roles`              one daemon's life: standby, leader while it holds the lock
:mod:`~.standby`            task: lnd's onion stream -> the journal (a standby's only job)
:mod:`~.mailbox`            the composition root: builds every part once, runs the tasks,
                            keeps the start-up and shutdown order (on the leader)
:mod:`~.old_layout`         at the lead: the mailbox moves from the old key layout first
:mod:`~.supervisor`         starting, watching and stopping the tasks
:mod:`~.peer_follower`      task: lnd's peer events and ListPeers -> who is online
:mod:`~.message_reader`     task: lnd's onion stream -> journal -> decision queue
:mod:`~.decider`            task: peel and decide
:mod:`~.store_writer`       task: kept messages -> Redis, riding out outages
:mod:`~.deliverer`          task: a returning peer's mail -> lnd, oldest first
:mod:`~.confirmations`      task: what lnd took -> confirmed and deleted, or back in the
                            queue when its peer left first
:mod:`~.sweeper`            task: expiry, gauges, a drain of every online peer
:mod:`~.request_server`     task: ``mailboxctl deliver``
:mod:`~.journal_writer`     task: the write-ahead journal of undecided messages
:mod:`~.inbox_look`         task: the leader decides what only a standby journaled
:mod:`~.outcomes`           task: :class:`Reporter`, every outcome to metrics, log, Redis
                            and the webhook
:mod:`~.decision_queue`     the queue from the reader to the decider, and its items
:mod:`~.outgoing`           a peeled message for its next hop; the sender to lnd
:mod:`~.interfaces`         the small interfaces the parts know one another by
:mod:`~.peers`              who is online; which channel leads to whom; task: the alias check
:mod:`~.policy`             whom mail is kept for
:mod:`~.race_guard`         the native transport's race window
:mod:`~.gauges`             the queue gauges
:mod:`~.metrics`            the Prometheus metrics and their HTTP endpoint
:mod:`~.webhook`            the signed webhook notifications
==========================  ==============================================================
"""

from lndmailbox.daemon.entry import main, run

__all__ = ["main", "run"]
