"""lndmailbox: an onion message mailbox for LND.

It holds BOLT 4 onion messages meant for offline users of an LSP in Redis and delivers
them through lnd the moment those users come back online. See docs/architecture.md.
"""

__version__ = "0.1.0"
