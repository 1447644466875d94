"""Where lnd listens and how to prove who we are to it: lncli-style settings and lndconnect.

:func:`resolve_endpoint` turns lncli-style settings (``--rpcserver``, ``--lnddir``,
``--network``, ``--tlscertpath``, ``--macaroonpath``), an inline PEM certificate and hex
macaroon, or an ``lndconnect://`` URI into an :class:`LndEndpoint`; :func:`endpoint_for`
does it for the daemon's and mailboxctl's :class:`~lndmailbox.config.Settings`. TLS is
always verified against lnd's own certificate; the macaroon travels hex encoded in the
``macaroon`` header of every call. Today's grpcio (checked with 1.85) negotiates lnd's
ECDSA certificate under TLS 1.2 and 1.3 without ``GRPC_SSL_CIPHER_SUITES``, so it is not
set.
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from lndmailbox.config import Settings
from lndmailbox.errors import ConfigError

__all__ = [
    "DEFAULT_LNDDIR",
    "DEFAULT_RPCSERVER",
    "NETWORKS",
    "LndEndpoint",
    "endpoint_for",
    "parse_lndconnect",
    "resolve_endpoint",
]

DEFAULT_RPCSERVER: Final = "localhost:10009"
DEFAULT_RPC_PORT: Final = 10009
DEFAULT_LNDDIR: Final = Path("~/.lnd")
#: The networks lncli accepts for ``--network``.
NETWORKS: Final = ("mainnet", "testnet", "testnet4", "signet", "simnet", "regtest")


@dataclass(frozen=True)
class LndEndpoint:
    """Where lnd listens and how to prove who we are to it."""

    target: str
    """``host:port`` of lnd's gRPC server."""
    tls_cert: bytes = field(repr=False)
    """lnd's TLS certificate, PEM: the only certificate the connection trusts."""
    macaroon: bytes = field(repr=False)
    """The macaroon, raw bytes (sent hex encoded)."""
    macaroon_source: str = field(default="the macaroon", compare=False)
    """Where the macaroon came from (``the macaroon /path/file``), for error messages."""


def _split_host_port(text: str, what: str) -> tuple[str, int]:
    text = text.strip()
    if not text:
        raise ConfigError(f"{what}: empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"{what}: bad address {text!r}")
        port_text = rest[1:]
        host = f"[{host}]"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:  # bare IPv6 address without a port
        host, port_text = f"[{text}]", ""
    else:
        host, port_text = text, ""
    if not host or host == "[]":
        raise ConfigError(f"{what}: no host in {text!r}")
    if not port_text:
        return host, DEFAULT_RPC_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{what}: bad port in {text!r}")
    return host, int(port_text)


def _b64url(text: str, what: str) -> bytes:
    cleaned = text.strip().replace("+", "-").replace("/", "_").rstrip("=")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as e:
        raise ConfigError(f"lndconnect: {what} is not base64url: {e}") from e


def _pem_from_der(der: bytes, what: str) -> bytes:
    try:
        return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
    except ValueError as e:
        raise ConfigError(f"{what}: not a DER certificate: {e}") from e


def _check_pem(pem: bytes, what: str) -> bytes:
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise ConfigError(f"{what}: not a PEM certificate: {e}") from e
    return pem


def parse_lndconnect(uri: str) -> tuple[str, bytes | None, bytes | None]:
    """``lndconnect://host:port?cert=...&macaroon=...`` -> (target, PEM cert, macaroon).

    ``cert`` is lnd's certificate as base64url DER without padding, ``macaroon`` the
    macaroon as base64url; either may be absent (None). The port defaults to 10009.
    """
    parts = urllib.parse.urlsplit(uri.strip())
    if parts.scheme.lower() != "lndconnect":
        raise ConfigError("lndconnect: the URI must start with lndconnect://")
    host, port = _split_host_port(parts.netloc, "lndconnect")
    params: dict[str, str] = {}
    for pair in parts.query.split("&"):
        if not pair:
            continue
        key, _, value = pair.partition("=")
        # unquote, not unquote_plus: a '+' of standard base64 must survive
        params[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
    cert: bytes | None = None
    if params.get("cert"):
        raw = _b64url(params["cert"], "cert")
        if raw.startswith(b"-----BEGIN"):
            cert = _check_pem(raw, "lndconnect cert")
        else:
            cert = _pem_from_der(raw, "lndconnect cert")
    macaroon = _b64url(params["macaroon"], "macaroon") if params.get("macaroon") else None
    return f"{host}:{port}", cert, macaroon


def _read(path: Path, what: str, flag: str) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read lnd's {what} {path} ({e.strerror}); set {flag}") from e


def resolve_endpoint(
    *,
    rpcserver: str = DEFAULT_RPCSERVER,
    lnddir: Path = DEFAULT_LNDDIR,
    network: str = "mainnet",
    tlscertpath: Path | None = None,
    macaroonpath: Path | None = None,
    tlscert: str | None = None,
    macaroon: str | None = None,
    lndconnect: str | None = None,
) -> LndEndpoint:
    """Where and how to reach lnd, from settings named and defaulted like lncli's.

    * target: the lndconnect URI's host, else ``rpcserver`` (port 10009 when omitted).
    * certificate: the URI's ``cert``, else ``tlscert`` (inline PEM), else the file
      ``tlscertpath``, default ``<lnddir>/tls.cert``.
    * macaroon: the URI's ``macaroon``, else ``macaroon`` (inline hex), else the file
      ``macaroonpath``, default ``<lnddir>/data/chain/bitcoin/<network>/admin.macaroon``.

    Giving both the inline value and the path of the same thing is a :class:`ConfigError`,
    as is anything unreadable.
    """
    network = network.strip().lower()
    if network not in NETWORKS:
        raise ConfigError(f"unknown network {network!r}; one of {', '.join(NETWORKS)}")
    if tlscert and tlscertpath is not None:
        raise ConfigError("give lnd's certificate as --tlscert or --tlscertpath, not both")
    if macaroon and macaroonpath is not None:
        raise ConfigError("give the macaroon as --macaroon or --macaroonpath, not both")
    lnddir = lnddir.expanduser()

    target = ""
    cert: bytes | None = None
    mac: bytes | None = None
    if lndconnect:
        target, cert, mac = parse_lndconnect(lndconnect)
    else:
        host, port = _split_host_port(rpcserver, "rpcserver")
        target = f"{host}:{port}"

    if cert is None:
        cert = _certificate(tlscert, tlscertpath or lnddir / "tls.cert")
    source = "the macaroon in the lndconnect URI"
    if mac is None:
        default = lnddir / "data" / "chain" / "bitcoin" / network / "admin.macaroon"
        path = macaroonpath or default
        source = "the macaroon given with --macaroon" if macaroon else f"the macaroon {path}"
        mac = _macaroon(macaroon, path)
    if not mac:
        raise ConfigError("the macaroon is empty")
    return LndEndpoint(target=target, tls_cert=cert, macaroon=mac, macaroon_source=source)


def _certificate(inline: str | None, path: Path) -> bytes:
    """lnd's certificate: ``inline`` PEM (``--tlscert``) if given, else the file ``path``."""
    if inline:
        text = inline.strip()
        if "\\n" in text and "\n" not in text:  # a PEM squeezed into one env line
            text = text.replace("\\n", "\n")
        return _check_pem(text.encode() + b"\n", "--tlscert")
    return _check_pem(_read(path, "TLS certificate", "--tlscertpath"), str(path))


def _macaroon(inline: str | None, path: Path) -> bytes:
    """The macaroon: ``inline`` hex (``--macaroon``) if given, else the file ``path``."""
    if inline:
        try:
            return bytes.fromhex(inline.strip())
        except ValueError as e:
            raise ConfigError("--macaroon: not hex") from e
    data = _read(path, "macaroon", "--macaroonpath")
    problem = macaroon_problem(data)
    if problem is not None:
        raise ConfigError(
            f"{path} is not a macaroon ({problem}); --macaroonpath wants the binary file lnd "
            "writes, such as <lnddir>/data/chain/bitcoin/<network>/admin.macaroon or the "
            "file of `lncli bakemacaroon --save_to` (see docs/lnd.md)"
        )
    return data


def macaroon_problem(data: bytes) -> str | None:
    """Why ``data`` cannot be a macaroon as lnd writes it, or None when it can.

    A light look at the V2 binary format of go-macaroon (what every lnd writes): version
    byte 2, a header section (optional location, identifier), caveat sections, an empty
    section, and a 32-byte signature. Each packet is ``field | uvarint length | data`` and
    a section ends with a zero byte. Caveats and the identifier's contents are lnd's to
    judge: this only tells a macaroon from some other file.
    """
    if not data:
        return "the file is empty"
    if data[0] != _MACAROON_V2:
        if _looks_hex(data):
            return (
                "it holds hex text: lnd's macaroon files are binary; decode it with "
                "`xxd -r -p`, or pass the text with --macaroon"
            )
        return f"it starts with byte 0x{data[0]:02x}, not 0x02, the V2 binary format's"
    try:
        offset = _section(data, 1, header=True)
        while data[offset] != _EOS:
            offset = _section(data, offset, header=False)
        field, signature, _ = _packet(data, offset + 1)
    except IndexError:
        return "it ends in the middle of a section"
    except ValueError as e:
        return str(e)
    if field != _FIELD_SIGNATURE or len(signature) != 32:
        return "no 32-byte signature after the caveats"
    return None


def endpoint_for(settings: Settings) -> LndEndpoint:
    """The endpoint the daemon's and mailboxctl's settings name (:func:`resolve_endpoint`)."""
    return resolve_endpoint(
        rpcserver=settings.rpcserver,
        lnddir=settings.lnddir,
        network=settings.network,
        tlscertpath=settings.tlscertpath,
        macaroonpath=settings.macaroonpath,
        tlscert=settings.tlscert,
        macaroon=settings.macaroon,
        lndconnect=settings.lndconnect,
    )


_MACAROON_V2: Final = 2
_EOS: Final = 0
_FIELD_IDENTIFIER: Final = 2
_FIELD_SIGNATURE: Final = 6


def _looks_hex(data: bytes) -> bool:
    text = data.strip()
    return len(text) >= 2 and all(c in b"0123456789abcdefABCDEF" for c in text)


def _uvarint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[offset]  # IndexError: cut short
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
        if shift > 63:
            raise ValueError("a length that does not fit 64 bits")


def _packet(data: bytes, offset: int) -> tuple[int, bytes, int]:
    """(field, data, offset after it)."""
    field, offset = _uvarint(data, offset)
    length, offset = _uvarint(data, offset)
    if offset + length > len(data):
        raise ValueError(f"field {field} says {length} bytes, past the end of the file")
    return field, data[offset : offset + length], offset + length


def _section(data: bytes, offset: int, *, header: bool) -> int:
    """The offset after the section at ``offset``, which must name an identifier."""
    fields: list[int] = []
    while data[offset] != _EOS:
        field, _, offset = _packet(data, offset)
        if fields and field <= fields[-1]:
            raise ValueError("fields out of order")
        fields.append(field)
    if _FIELD_IDENTIFIER not in fields:
        raise ValueError("a caveat without an identifier" if not header else "no identifier")
    return offset + 1
