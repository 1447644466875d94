"""tests/lsps_signatures.py: z-base-32 and lnd-style signature recovery, on vectors made
elsewhere and on signatures simnet's SignMessage made."""

from __future__ import annotations

import random
from collections.abc import Callable

import coincurve
import grpc
import grpc.aio
import pytest
from simnet import SimNode
from simnet.signing import zbase32_encode

from lndmailbox.lnd.lnrpc import lightning_pb2 as ln
from lndmailbox.lnd.lnrpc import lightning_pb2_grpc as ln_grpc
from tests.lsps_signatures import lightning_signer, zbase32_decode

# Byte-aligned examples of the z-base-32 specification (Zooko Wilcox-O'Hearn's
# human-oriented-base-32-encoding.txt, as github.com/tv42/zbase32, lnd's decoder, tests
# them), and edge cases of that decoder's tests.
ZBASE32_VECTORS = [
    (b"", ""),
    (bytes([240, 191, 199]), "6n9hq"),
    (bytes([212, 122, 4]), "4t7ye"),
    (b"\xff", "9h"),
    (b"\xb5", "sw"),
    (b"\x34\x5a", "gtpy"),
    (b"\xff" * 5, "99999999"),
]

# Signatures made by lnd nodes, from Core Lightning's checkmessage tests
# (tests/test_misc.py), which rust-lightning's message_signing tests reuse:
# (message, signature, the signer's key).
LND_SIGNED = [
    (
        b"is this compatible?",
        "rbgfioj114mh48d8egqx8o9qxqw4fmhe8jbeeabdioxnjk8z3t1ma1hu1fiswpakgucwwzwo6ofycffbsqus"
        "qdimugbh41n1g698hr9t",
        "02b80cabdf82638aac86948e4c06e82064f547768dcef977677b9ea931ea75bab5",
    ),
    (
        b"hi",
        "rnrphcjswusbacjnmmmrynh9pqip7sy5cx695h6mfu64iac6qmcmsd8xnsyczwmpqp9shqkth3h4jmkgyqu5"
        "z47jfn1q7gpxtaqpx4xg",
        "02de60d194e1ca5947b59fe8e2efd6aadeabfb67f2e89e13ae1a799c1e08e4a43b",
    ),
]

# rust-lightning's message_signing test: the secret key 1 signing "test message"
# (RFC 6979 nonces, so the signature is fixed).
KEY_ONE = (1).to_bytes(32, "big")
KEY_ONE_SIGNED = (
    b"test message",
    "d9tibmnic9t5y41hg7hkakdcra94akas9ku3rmmj4ag9mritc8ok4p5qzefs78c9pqfhpuftqqzhydbdwfg7u6w6"
    "wdxcqpqn4sj4e73e",
)


@pytest.mark.parametrize(("data", "text"), ZBASE32_VECTORS)
def test_zbase32_decodes_the_specifications_examples(data: bytes, text: str) -> None:
    assert zbase32_decode(text) == data


@pytest.mark.parametrize(
    "text",
    [
        "6n9hQ",  # upper case is outside the alphabet, as lnd's decoder has it
        "6n9h2",  # "2" is not in it either
        "6n9hl",
        "99",  # 10 bits: one byte and two bits that are not zero
        "9b",
    ],
)
def test_zbase32_refuses_what_no_encoder_writes(text: str) -> None:
    with pytest.raises(ValueError, match="not z-base-32"):
        zbase32_decode(text)


def test_zbase32_decodes_what_simnets_encoder_writes(rng: random.Random) -> None:
    for _ in range(200):
        data = rng.randbytes(rng.randrange(0, 80))
        assert zbase32_decode(zbase32_encode(data)) == data


@pytest.mark.parametrize(("message", "signature", "signer"), LND_SIGNED)
def test_recovers_the_signer_of_lnd_made_signatures(
    message: bytes, signature: str, signer: str
) -> None:
    assert lightning_signer(message, signature).hex() == signer


def test_recovers_the_key_one_vector() -> None:
    message, signature = KEY_ONE_SIGNED
    assert lightning_signer(message, signature) == coincurve.PrivateKey(KEY_ONE).public_key.format()


def test_another_message_recovers_another_key() -> None:
    message, signature, signer = LND_SIGNED[0]
    assert lightning_signer(message + b" ", signature).hex() != signer


def _with_header(signature: str, header: int) -> str:
    raw = bytearray(zbase32_decode(signature))
    raw[0] = header
    return zbase32_encode(bytes(raw))


@pytest.mark.parametrize(
    ("mangle", "why"),
    [
        (lambda s: s[:-8], "65 bytes"),
        (lambda s: s + "yyyyyyyy", "65 bytes"),
        (lambda s: s[:-1] + "0", "not z-base-32"),
        # 27 to 30 are an uncompressed key's headers, which lnd never writes.
        (lambda s: _with_header(s, 27), "header byte 27"),
        (lambda s: _with_header(s, 35), "header byte 35"),
        (lambda s: zbase32_encode(bytes([31]) + bytes(64)), "no key recovers"),
    ],
    ids=["short", "long", "bad-char", "uncompressed", "header-35", "zero-r-s"],
)
def test_a_bad_signature_is_a_value_error(mangle: Callable[[str], str], why: str) -> None:
    message, signature, _ = LND_SIGNED[0]
    with pytest.raises(ValueError, match=why):
        lightning_signer(message, mangle(signature))


async def test_recovers_the_node_key_from_simnets_sign_message(node21: SimNode) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=node21.tls.cert_pem)
    metadata = (("macaroon", node21.bake_macaroon(["message:write"]).hex()),)
    async with grpc.aio.secure_channel(node21.target, creds) as channel:
        stub = ln_grpc.LightningStub(channel)
        for message in (b"x", b"LSPS5: DO NOT SIGN THIS MESSAGE MANUALLY", bytes(range(256))):
            response = await stub.SignMessage(
                ln.SignMessageRequest(msg=message), metadata=metadata, timeout=5
            )
            assert lightning_signer(message, response.signature) == node21.pubkey
