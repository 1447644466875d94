"""LSPS0 (bLIP-50) and LSPS5 (bLIP-55), pure: JSON-RPC messages, webhook rules and the
notifications' bytes. No I/O: the daemon reads and answers the messages, signs and POSTs.

- :mod:`~lndmailbox.lsps.webhook_url`: what a webhook URL may be, and how it is shown
  (its host and a short digest: the URL usually carries a phone's push token).
"""

from __future__ import annotations

from typing import Final

__all__ = ["LSPS0_FEATURE_BIT", "LSPS_MESSAGE_TYPE"]

#: The Lightning message type that carries LSPS messages (bLIP-50).
LSPS_MESSAGE_TYPE: Final = 37913
#: The init and node_announcement feature bit of an LSPS0 server (bLIP-50), odd: optional.
LSPS0_FEATURE_BIT: Final = 729
