"""The itest's own plumbing, checked without building or running anything real.

What is held: ``itest.build._install`` leaves a complete directory (``build.json`` and the
executables) or, when the build fails, nothing at all, and does nothing for a complete one;
``itest.acceptor``'s runtime-built messages put lnd's field numbers on the wire and refuse
truncated bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError

from itest.acceptor import ChannelAcceptRequest, ChannelAcceptResponse
from itest.build import BuildError, _complete, _install


def test_install_leaves_a_complete_directory_and_skips_it_next_time(tmp_path: Path) -> None:
    target = tmp_path / "tool-v1"
    calls: list[Path] = []

    def fill(staging: Path) -> Mapping[str, object]:
        calls.append(staging)
        assert not (staging / "build.json").exists()  # written after fill, so last
        (staging / "tool").write_text("#!/bin/sh\n")
        (staging / "tool").chmod(0o755)
        return {"seconds": 1.5}

    assert _install(target, ["tool"], fill) == {"seconds": 1.5}
    assert _complete(target, ["tool"])
    assert '"seconds": 1.5' in (target / "build.json").read_text()
    assert _install(target, ["tool"], fill) is None
    assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tool-v1"]


def test_install_replaces_an_incomplete_directory(tmp_path: Path) -> None:
    target = tmp_path / "tool-v1"
    target.mkdir()
    (target / "tool").write_text("half")  # no build.json: an interrupted copy

    def fill(staging: Path) -> Mapping[str, object]:
        (staging / "tool").write_text("#!/bin/sh\n")
        (staging / "tool").chmod(0o755)
        return {}

    assert _install(target, ["tool"], fill) == {}
    assert (target / "tool").read_text() == "#!/bin/sh\n"


def test_a_failed_build_leaves_no_staging_and_no_target(tmp_path: Path) -> None:
    def fill(staging: Path) -> Mapping[str, object]:
        (staging / "tool").write_text("partial")
        raise BuildError("go build failed")

    with pytest.raises(BuildError):
        _install(tmp_path / "tool-v1", ["tool"], fill)
    assert list(tmp_path.iterdir()) == []


def test_acceptor_response_carries_lnds_field_numbers() -> None:
    chan_id = bytes(range(32))
    encoded = ChannelAcceptResponse(
        accept=True, pending_chan_id=chan_id, error="no", min_accept_depth=3, zero_conf=True
    ).encode()
    # accept=1 (varint), pending_chan_id=2 and error=3 (LEN), min_accept_depth=10, zero_conf=11.
    assert encoded == b"\x08\x01" + b"\x12\x20" + chan_id + b"\x1a\x02no" + b"\x50\x03\x58\x01"
    # proto3: fields at their defaults are not sent.
    assert ChannelAcceptResponse(accept=False, pending_chan_id=b"").encode() == b""


def test_acceptor_request_reads_lnds_fields_and_skips_the_rest() -> None:
    pubkey, chain, chan_id = b"\x02" * 33, b"\x06" * 32, b"\x07" * 32
    data = (
        b"\x0a\x21" + pubkey  # 1 node_pubkey
        + b"\x12\x20" + chain  # 2 chain_hash, not read
        + b"\x1a\x20" + chan_id  # 3 pending_chan_id
        + b"\x20\xa0\x8d\x06"  # 4 funding_amt = 100000
        + b"\x58\x90\x01"  # 11 csv_delay = 144, not read
        + b"\x68\x01"  # 13 channel_flags
        + b"\x70\x03"  # 14 commitment_type = ANCHORS
        + b"\x78\x01"  # 15 wants_zero_conf
        + b"\x80\x01\x01"  # 16 wants_scid_alias
    )  # fmt: skip
    assert ChannelAcceptRequest.decode(data) == ChannelAcceptRequest(
        node_pubkey=pubkey,
        pending_chan_id=chan_id,
        funding_amt=100_000,
        channel_flags=1,
        commitment_type=3,
        wants_zero_conf=True,
        wants_scid_alias=True,
    )
    for cut in (1, 10, len(data) - 40):
        with pytest.raises(DecodeError):
            ChannelAcceptRequest.decode(data[:-cut])
    with pytest.raises(DecodeError):  # an 11-byte varint
        ChannelAcceptRequest.decode(b"\x20" + b"\xff" * 10 + b"\x01")
