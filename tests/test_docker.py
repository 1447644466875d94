"""docker-compose.yml and the Dockerfile, checked without a Docker engine (none runs here).

What is held: the compose file parses and wires the services the README promises; the
files the image copies exist; lnd is 0.21 with the same onion-message lines as the itest's
native generation; the macaroon is baked with exactly the permissions the mailbox uses;
every LNDMAILBOX_* variable is a real setting; the image runs the command the itest runs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from itest.lndnode import CUSTOM_PROTOCOL_ARGS
from lndmailbox.config import OPTIONS
from lndmailbox.lnd import PERMISSIONS

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_compose_has_the_promised_services() -> None:
    services = compose()["services"]
    assert set(services) == {"bitcoind", "lnd", "credentials", "redis", "mailbox"}
    assert services["mailbox"]["build"] == "."
    assert (ROOT / "Dockerfile").is_file()


def test_every_file_the_image_copies_exists() -> None:
    for line in dockerfile().splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            *sources, _ = shlex.split(line)[1:]
            for source in sources:
                assert (ROOT / source).exists(), source


def test_lnd_is_021_with_the_itest_native_lines() -> None:
    lnd = compose()["services"]["lnd"]
    assert re.fullmatch(r"lightninglabs/lnd:v0\.21\.\d+-beta", lnd["image"])
    flags = lnd["command"]
    # The native generation runs on lnd's defaults: none of the custom-message lines.
    assert not set(flags) & set(CUSTOM_PROTOCOL_ARGS)
    assert not [f for f in flags if f.startswith("--protocol.")]
    for itest_line in ("--noseedbackup", "--bitcoin.regtest"):
        assert itest_line in flags


def test_macaroon_is_baked_with_exactly_the_mailbox_permissions() -> None:
    script = " ".join(compose()["services"]["credentials"]["command"])
    baked = shlex.split(script.split("bakemacaroon", 1)[1].split("--save_to", 1)[0])
    assert sorted(baked) == sorted({permission for _, permission in PERMISSIONS.values()})


def test_mailbox_environment_names_real_settings() -> None:
    known = {option.env for option in OPTIONS}
    environment = compose()["services"]["mailbox"]["environment"]
    assert set(environment) <= known, set(environment) - known
    credentials = "/credentials"
    assert environment["LNDMAILBOX_TLSCERTPATH"].startswith(credentials)
    assert environment["LNDMAILBOX_MACAROONPATH"].startswith(credentials)
    assert f"credentials:{credentials}:ro" in compose()["services"]["mailbox"]["volumes"]


def test_redis_keeps_an_append_only_file() -> None:
    command = compose()["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"


def test_image_runs_the_command_the_itest_runs_as_non_root() -> None:
    text = dockerfile()
    assert 'ENTRYPOINT ["lndmailbox"]' in text
    # The itest starts the same console script (itest/daemon.py).
    assert '"lndmailbox"' in (ROOT / "itest" / "daemon.py").read_text()
    user = re.search(r"^USER (\S+)$", text, re.MULTILINE)
    assert user is not None
    assert user.group(1) != "root"
    assert "HEALTHCHECK" in text
