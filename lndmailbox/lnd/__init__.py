"""lnd over gRPC: the only package that imports grpc or the generated stubs.

=========================  =============================================================
module                     holds
=========================  =============================================================
:mod:`~.endpoint`          where lnd listens and the credentials: lncli-style settings,
                           lndconnect URIs, :func:`endpoint_for` the daemon's settings
:mod:`~.errors`            gRPC failures as one :class:`~lndmailbox.errors.LndError`,
                           retryable or not; the permissions every RPC needs
:mod:`~.values`            what the client hands out: :class:`NodeInfo`,
                           :class:`PeerEvent`, :class:`Channel`,
                           :class:`IncomingLspsMessage`, ...
:mod:`~.resolver`          which SCIDs lnd >= 0.21 forwards by:
                           :func:`unresolvable_aliases` (pure)
:mod:`~.streams`           :class:`Subscription`: streams subscribed again when they break
:mod:`~.client`            :class:`LndClient` (unary calls retried through
                           :class:`~lndmailbox.retry.Retry`) and :class:`LndNodeKey`
``lnrpc/``                 the stubs generated from protos/ (``make protos``)
=========================  =============================================================
"""

from lndmailbox.lnd.client import LndClient, LndNodeKey
from lndmailbox.lnd.endpoint import (
    DEFAULT_LNDDIR,
    DEFAULT_RPCSERVER,
    NETWORKS,
    LndEndpoint,
    endpoint_for,
    parse_lndconnect,
    resolve_endpoint,
)
from lndmailbox.lnd.errors import PERMISSIONS, rpc_error
from lndmailbox.lnd.resolver import UnresolvableAliases, unresolvable_aliases
from lndmailbox.lnd.streams import Subscription
from lndmailbox.lnd.values import (
    Channel,
    ChannelIndex,
    IncomingLspsMessage,
    IncomingMalformed,
    IncomingOnionMessage,
    NodeInfo,
    PeerEvent,
    Resubscribed,
    Transport,
    transport_for_version,
)

__all__ = [
    "DEFAULT_LNDDIR",
    "DEFAULT_RPCSERVER",
    "NETWORKS",
    "PERMISSIONS",
    "Channel",
    "ChannelIndex",
    "IncomingLspsMessage",
    "IncomingMalformed",
    "IncomingOnionMessage",
    "LndClient",
    "LndEndpoint",
    "LndNodeKey",
    "NodeInfo",
    "PeerEvent",
    "Resubscribed",
    "Subscription",
    "Transport",
    "UnresolvableAliases",
    "endpoint_for",
    "parse_lndconnect",
    "resolve_endpoint",
    "rpc_error",
    "transport_for_version",
    "unresolvable_aliases",
]
