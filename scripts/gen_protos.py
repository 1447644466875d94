"""Generate lndmailbox/lnd/lnrpc/ from protos/ (``make protos``), or check it is fresh.

    python scripts/gen_protos.py           # regenerate lndmailbox/lnd/lnrpc/
    python scripts/gen_protos.py --check   # exit 1 if the committed files are stale

The stubs are made with grpcio-tools (``*_pb2.py``, ``*_pb2_grpc.py``) and mypy-protobuf
(``*.pyi`` for the messages and the gRPC services). protoc writes imports between the
generated modules as top-level imports (``import lightning_pb2``); they are rewritten to
relative ones so the stubs live inside the package. The output depends only on protos/ and
the versions of grpcio-tools and mypy-protobuf, so ``--check`` in CI catches a .proto edit
without a regeneration.
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "lndmailbox" / "lnd" / "lnrpc"

INIT = '''\
"""Python stubs generated from protos/ by scripts/gen_protos.py (``make protos``).

Do not edit: change protos/*.proto and regenerate. Only lndmailbox.lnd imports these.
"""
'''

# "import lightning_pb2 as lightning__pb2" -> "from . import lightning_pb2 as lightning__pb2"
_SIBLING_IMPORT = re.compile(r"^import (\w+_pb2)( as \w+)?$", re.MULTILINE)


def _plugin(name: str) -> str:
    """Path of a protoc plugin installed beside this Python (or on PATH)."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        sys.exit(f"gen_protos: {name} not found; install the dev extras (mypy-protobuf)")
    return found


def generate(out: Path) -> None:
    """Run protoc into ``out`` and post-process the files there."""
    protos = sorted(p.name for p in PROTO_DIR.glob("*.proto"))
    if not protos:
        sys.exit(f"gen_protos: no .proto files in {PROTO_DIR}")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_DIR}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    result = subprocess.run(cmd, cwd=PROTO_DIR, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"gen_protos: protoc failed:\n{result.stdout}{result.stderr}")
    for path in sorted(out.iterdir()):
        if path.suffix in (".py", ".pyi"):
            text = _SIBLING_IMPORT.sub(r"from . import \1\2", path.read_text())
            path.write_text(text.rstrip("\n") + "\n")
    (out / "__init__.py").write_text(INIT)


def _generated_files(directory: Path) -> dict[str, str]:
    if not directory.is_dir():
        return {}
    return {
        p.name: p.read_text()
        for p in sorted(directory.iterdir())
        if p.is_file() and p.suffix in (".py", ".pyi")
    }


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = _generated_files(Path(tmp))
    committed = _generated_files(OUT_DIR)
    problems: list[str] = []
    for name in sorted(fresh.keys() | committed.keys()):
        if name not in committed:
            problems.append(f"missing: lndmailbox/lnd/lnrpc/{name}")
        elif name not in fresh:
            problems.append(f"not generated from protos/ (stale?): lndmailbox/lnd/lnrpc/{name}")
        elif fresh[name] != committed[name]:
            diff = difflib.unified_diff(
                committed[name].splitlines(keepends=True),
                fresh[name].splitlines(keepends=True),
                f"committed/{name}",
                f"generated/{name}",
                n=1,
            )
            problems.append(f"differs: lndmailbox/lnd/lnrpc/{name}\n" + "".join(list(diff)[:40]))
    if problems:
        print("lndmailbox/lnd/lnrpc/ is stale: run `make protos` and commit the result.")
        print("(The check regenerates with the installed grpcio-tools and mypy-protobuf;")
        print(" a version difference also shows up here.)")
        for problem in problems:
            print(problem)
        return 1
    print("lndmailbox/lnd/lnrpc/ is up to date with protos/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if lndmailbox/lnd/lnrpc/ is stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        return check()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        OUT_DIR.mkdir(exist_ok=True)
        for stale in _generated_files(OUT_DIR):
            (OUT_DIR / stale).unlink()
        for name, text in _generated_files(Path(tmp)).items():
            (OUT_DIR / name).write_text(text)
    print(f"generated {OUT_DIR.relative_to(ROOT)}/ from protos/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
