"""Reaching lnd: lncli-style settings, inline credentials, lndconnect URIs, version parsing."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from simnet.macaroons import MacaroonService
from simnet.tls import generate_tls_pair

from lndmailbox.config import Settings
from lndmailbox.errors import ConfigError
from lndmailbox.lnd import (
    LndEndpoint,
    Transport,
    endpoint_for,
    parse_lndconnect,
    resolve_endpoint,
    transport_for_version,
)

CERT = generate_tls_pair().cert_pem
OTHER_CERT = generate_tls_pair().cert_pem
MACAROON = MacaroonService().bake_admin()
OTHER_MACAROON = MacaroonService().bake(["info:read"])


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def _lnddir(tmp_path: Path, network: str = "mainnet") -> Path:
    lnddir = tmp_path / "lnd"
    macaroon_dir = lnddir / "data" / "chain" / "bitcoin" / network
    macaroon_dir.mkdir(parents=True)
    (lnddir / "tls.cert").write_bytes(CERT)
    (macaroon_dir / "admin.macaroon").write_bytes(MACAROON)
    return lnddir


@pytest.mark.parametrize(
    ("version", "transport"),
    [
        ("0.21.2-beta commit=v0.21.2-beta", Transport.NATIVE),
        ("0.21.0-beta.rc1 commit=v0.21.0-beta.rc1", Transport.NATIVE),
        ("0.22.0-beta", Transport.NATIVE),
        ("1.0.0", Transport.NATIVE),
        ("0.20.1-beta commit=v0.20.1-beta", Transport.CUSTOM),
        ("0.18.5-beta", Transport.CUSTOM),
        ("v0.19.0-beta", Transport.CUSTOM),
        ("0.20", Transport.CUSTOM),
    ],
)
def test_transport_for_version(version: str, transport: Transport) -> None:
    assert transport_for_version(version) is transport


@pytest.mark.parametrize("version", ["", "beta", "lnd", "x0.21"])
def test_transport_for_an_unreadable_version_asks_for_the_flag(version: str) -> None:
    with pytest.raises(ConfigError, match="--transport"):
        transport_for_version(version)


def test_defaults_follow_lncli(tmp_path: Path) -> None:
    lnddir = _lnddir(tmp_path, "regtest")
    endpoint = resolve_endpoint(lnddir=lnddir, network="regtest")
    assert endpoint == LndEndpoint("localhost:10009", CERT, MACAROON)


def test_lnddir_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    _lnddir(tmp_path)
    endpoint = resolve_endpoint(lnddir=Path("~/lnd"))
    assert endpoint.tls_cert == CERT


def test_explicit_paths_win_over_lnddir(tmp_path: Path) -> None:
    lnddir = _lnddir(tmp_path)
    (tmp_path / "other.cert").write_bytes(OTHER_CERT)
    (tmp_path / "mailbox.macaroon").write_bytes(OTHER_MACAROON)
    endpoint = resolve_endpoint(
        rpcserver="lnd.internal:10010",
        lnddir=lnddir,
        tlscertpath=tmp_path / "other.cert",
        macaroonpath=tmp_path / "mailbox.macaroon",
    )
    assert endpoint == LndEndpoint("lnd.internal:10010", OTHER_CERT, OTHER_MACAROON)


def test_missing_files_name_the_path_and_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tls\.cert.*--tlscertpath"):
        resolve_endpoint(lnddir=tmp_path)
    (tmp_path / "tls.cert").write_bytes(CERT)
    with pytest.raises(ConfigError, match=r"bitcoin/testnet/admin\.macaroon.*--macaroonpath"):
        resolve_endpoint(lnddir=tmp_path, network="testnet")


def test_a_file_that_is_no_certificate(tmp_path: Path) -> None:
    (tmp_path / "tls.cert").write_bytes(b"not a certificate")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        resolve_endpoint(lnddir=tmp_path, macaroon=MACAROON.hex())


def test_inline_credentials(tmp_path: Path) -> None:
    endpoint = resolve_endpoint(
        lnddir=tmp_path / "absent", tlscert=CERT.decode(), macaroon=MACAROON.hex().upper()
    )
    assert endpoint == LndEndpoint("localhost:10009", CERT, MACAROON)


def test_inline_pem_squeezed_into_one_line(tmp_path: Path) -> None:
    one_line = CERT.decode().strip().replace("\n", "\\n")
    endpoint = resolve_endpoint(lnddir=tmp_path, tlscert=one_line, macaroon=MACAROON.hex())
    assert endpoint.tls_cert == CERT


def test_inline_values_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--macaroon: not hex"):
        resolve_endpoint(lnddir=tmp_path, tlscert=CERT.decode(), macaroon="zz")
    with pytest.raises(ConfigError, match="--tlscert: not a PEM certificate"):
        resolve_endpoint(lnddir=tmp_path, tlscert="-----BEGIN nonsense", macaroon="00")


def test_inline_and_path_together_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not both"):
        resolve_endpoint(tlscert=CERT.decode(), tlscertpath=tmp_path / "tls.cert")
    with pytest.raises(ConfigError, match="not both"):
        resolve_endpoint(macaroon="00", macaroonpath=tmp_path / "m")


@pytest.mark.parametrize(
    ("rpcserver", "target"),
    [
        ("localhost", "localhost:10009"),
        ("10.0.0.5:10010", "10.0.0.5:10010"),
        ("[::1]:10011", "[::1]:10011"),
        ("[::1]", "[::1]:10009"),
        ("::1", "[::1]:10009"),
        (" lnd:443 ", "lnd:443"),
    ],
)
def test_rpcserver_forms(tmp_path: Path, rpcserver: str, target: str) -> None:
    endpoint = resolve_endpoint(rpcserver=rpcserver, tlscert=CERT.decode(), macaroon="02")
    assert endpoint.target == target


@pytest.mark.parametrize("rpcserver", ["", "host:0", "host:99999", "host:port", "[::1"])
def test_bad_rpcserver(rpcserver: str) -> None:
    with pytest.raises(ConfigError):
        resolve_endpoint(rpcserver=rpcserver, tlscert=CERT.decode(), macaroon="02")


def test_unknown_network() -> None:
    with pytest.raises(ConfigError, match="unknown network"):
        resolve_endpoint(network="bitcoin", tlscert=CERT.decode(), macaroon="02")


def test_lndconnect_uri() -> None:
    uri = f"lndconnect://node.example.com:10009?cert={_b64url(_der(CERT))}&macaroon={_b64url(MACAROON)}"
    assert parse_lndconnect(uri) == ("node.example.com:10009", CERT, MACAROON)
    endpoint = resolve_endpoint(lndconnect=uri, lnddir=Path("/nonexistent"))
    assert endpoint == LndEndpoint("node.example.com:10009", CERT, MACAROON)


def test_lndconnect_takes_standard_base64_and_percent_escapes() -> None:
    der = _der(CERT)
    standard = base64.b64encode(der).decode().replace("+", "%2B").replace("/", "%2F")
    uri = f"lndconnect://[::1]?macaroon={base64.b64encode(MACAROON).decode()}&cert={standard}"
    assert parse_lndconnect(uri) == ("[::1]:10009", CERT, MACAROON)


def test_lndconnect_without_cert_uses_the_other_settings(tmp_path: Path) -> None:
    (tmp_path / "lnd.cert").write_bytes(OTHER_CERT)
    uri = f"lndconnect://10.1.2.3:8080?macaroon={_b64url(MACAROON)}"
    assert parse_lndconnect(uri) == ("10.1.2.3:8080", None, MACAROON)
    endpoint = resolve_endpoint(lndconnect=uri, tlscertpath=tmp_path / "lnd.cert")
    assert endpoint == LndEndpoint("10.1.2.3:8080", OTHER_CERT, MACAROON)


@pytest.mark.parametrize(
    ("uri", "error"),
    [
        ("https://host:10009?cert=AA", "lndconnect://"),
        ("lndconnect://host:10009?cert=!!!!", "not base64url"),
        ("lndconnect://host:10009?cert=AAAA", "not a DER certificate"),
        ("lndconnect://:10009?cert=AAAA", "no host"),
    ],
)
def test_bad_lndconnect(uri: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_lndconnect(uri)


def test_endpoint_repr_hides_credentials() -> None:
    text = repr(LndEndpoint("h:1", CERT, MACAROON))
    assert MACAROON.hex() not in text
    assert "BEGIN" not in text


def test_endpoint_for_reads_the_settings_like_resolve_endpoint(tmp_path: Path) -> None:
    lnddir = _lnddir(tmp_path, "regtest")
    settings = Settings(rpcserver="lnd.internal", lnddir=lnddir, network="regtest")
    assert endpoint_for(settings) == LndEndpoint("lnd.internal:10009", CERT, MACAROON)
    inline = Settings(lnddir=tmp_path / "absent", tlscert=OTHER_CERT.decode(), macaroon="02ff")
    assert endpoint_for(inline) == LndEndpoint("localhost:10009", OTHER_CERT, b"\x02\xff")
