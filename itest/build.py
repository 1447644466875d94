"""Builds the itest's real binaries (btcd, lnd, their CLIs, the LDK wallet) once, into a cache.

    python -m itest.build            # build what is missing, print where everything is
    python -m itest.build --json     # the same, as JSON

Every Go binary comes from its Go module at a pinned version, built with the local Go toolchain:
lnd's go.mod carries ``replace`` directives, so ``go install module@version`` refuses it;
instead the module is downloaded (``go mod download -json``) and built inside its own
directory in the module cache (read-only, which ``go build`` does not mind: it writes only
to the build cache and to ``-o``). Each version lands in ``<cache>/<name>-<version>/`` with a
``build.json`` written last, so a directory with that file is complete and a second run
does nothing but check it. A file lock keeps two concurrent runs from building twice.

The LDK wallet program (``itest/ldk/``, Rust, crates pinned by its ``Cargo.lock``) is built
with ``cargo build --locked`` into a target directory under the cache (``<cache>/ldk-target``,
so rebuilds are incremental) and its binary copied, with a ``build.json``, to
``<cache>/ldk-<digest>/``, where the digest covers ``Cargo.toml``, ``Cargo.lock`` and
``src/``: any change to the program gives it a new directory.

The cache is ``$LNDMAILBOX_ITEST_CACHE``, else ``$XDG_CACHE_HOME/lndmailbox-itest``, else
``~/.cache/lndmailbox-itest``.
"""

from __future__ import annotations

import argparse
import enum
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path


class Generation(enum.Enum):
    """The two lnd generations the mailbox supports, by how onion messages reach it."""

    CUSTOM = "0.20"  # lnd 0.18-0.20: onion messages only as custom message 513
    NATIVE = "0.21"  # lnd >= 0.21: lnd parses, forwards and streams onion messages itself


BTCD_MODULE = "github.com/btcsuite/btcd"
LND_MODULE = "github.com/lightningnetwork/lnd"

# The newest release of each line that the Go module proxy serves. Checked with
# `go mod download -json MODULE@VERSION` in 2026-11: lnd v0.20.3-beta is tagged upstream but
# the proxy refuses its zip (403 "not available") and sum.golang.org does not know it, so
# v0.20.2-beta is the newest 0.20.x that can be built from its module; v0.21.4-beta does not
# exist yet.
BTCD_VERSION = "v0.26.2"
LND_VERSIONS: Mapping[Generation, str] = {
    Generation.CUSTOM: "v0.20.2-beta",
    Generation.NATIVE: "v0.21.3-beta",
}
# The build tags the mailbox needs: Signer.DeriveSharedKey (signrpc) and the peers service.
LND_TAGS = "signrpc peersrpc"

# The rust-lightning program that plays one LDK wallet per process (see itest/ldknode.py).
LDK_CRATE = Path(__file__).resolve().parent / "ldk"
LDK_BINARY = "lndmailbox-ldk"


def cache_root() -> Path:
    explicit = os.environ.get("LNDMAILBOX_ITEST_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "lndmailbox-itest"


@dataclass(frozen=True)
class BtcdBinaries:
    version: str
    btcd: Path
    btcctl: Path


@dataclass(frozen=True)
class LndBinaries:
    version: str
    lnd: Path
    lncli: Path


@dataclass(frozen=True)
class ChainBinaries:
    """What a regtest network of lnd nodes needs (itest/network.py; ``make bench-lnd``)."""

    btcd: BtcdBinaries
    lnd: Mapping[Generation, LndBinaries]


@dataclass(frozen=True)
class Binaries(ChainBinaries):
    ldk: Path
    """The ``lndmailbox-ldk`` binary."""


class BuildError(Exception):
    """The Go or Rust toolchain could not produce a binary; the message carries its output."""


def _log(message: str) -> None:
    print(f"[itest.build] {message}", file=sys.stderr, flush=True)


def _go() -> str:
    found = shutil.which("go")
    if found is None:
        raise BuildError(
            "the Go toolchain (`go`) is not on PATH; install Go >= 1.25 to build lnd and btcd"
        )
    return found


def _run(argv: Sequence[str], cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    result = subprocess.run(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise BuildError(
            f"`{' '.join(argv)}` failed with exit code {result.returncode} in {cwd}:\n"
            f"{result.stderr.strip()}"
        )
    return result.stdout


def module_dir(module: str, version: str) -> Path:
    """Downloads ``module@version`` into the module cache (if needed) and returns its directory."""
    out = _run([_go(), "mod", "download", "-json", f"{module}@{version}"], cwd=Path.home())
    info = json.loads(out)
    if "Error" in info:
        raise BuildError(f"go mod download {module}@{version}: {info['Error']}")
    return Path(info["Dir"])


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _complete(target: Path, names: Sequence[str]) -> bool:
    return (target / "build.json").is_file() and all(
        os.access(target / name, os.X_OK) for name in names
    )


def _install(
    target: Path, names: Sequence[str], fill: Callable[[Path], Mapping[str, object]]
) -> Mapping[str, object] | None:
    """Makes ``target`` a complete directory of the executables ``names``, unless it is one.

    ``fill(staging)`` writes the binaries into a fresh staging directory next to ``target`` and
    returns the build record, which lands in ``build.json`` last; then the staging directory
    is renamed into place, so a directory with ``build.json`` and executable ``names`` is
    complete. The staging directory is removed if anything fails. Returns the record, or
    None when ``target`` was already complete.
    """
    if _complete(target, names):
        return None
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        record = fill(staging)
        (staging / "build.json").write_text(json.dumps(record, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.chmod(0o755)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return record


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _build(
    target: Path,
    module: str,
    version: str,
    packages: Mapping[str, str],
    extra_args: Sequence[str] = (),
) -> None:
    """Builds ``packages`` (binary name -> package path inside the module) into ``target``."""

    def fill(staging: Path) -> Mapping[str, object]:
        started = time.monotonic()
        _log(f"building {module}@{version} into {target} (a cold build takes minutes)")
        source = module_dir(module, version)
        for name, package in packages.items():
            _log(f"  go build {name}")
            _run(
                [_go(), "build", "-trimpath", *extra_args, "-o", str(staging / name), package],
                cwd=source,
            )
        seconds = round(time.monotonic() - started, 1)
        return {
            "module": module,
            "version": version,
            "go": _run([_go(), "version"]).strip(),
            "args": list(extra_args),
            "seconds": seconds,
            "built_at": _now(),
        }

    if (record := _install(target, list(packages), fill)) is not None:
        _log(f"built {module}@{version} in {record['seconds']}s")


def ensure_btcd(root: Path, version: str = BTCD_VERSION) -> BtcdBinaries:
    target = root / f"btcd-{version}"
    _build(target, BTCD_MODULE, version, {"btcd": ".", "btcctl": "./cmd/btcctl"})
    return BtcdBinaries(version, target / "btcd", target / "btcctl")


def ensure_lnd(root: Path, version: str) -> LndBinaries:
    target = root / f"lnd-{version}"
    # build.Commit is what release builds stamp in (GetInfo.version "0.21.3-beta commit=...").
    ldflags = f"-X {LND_MODULE}/build.Commit={version}"
    _build(
        target,
        LND_MODULE,
        version,
        {"lnd": "./cmd/lnd", "lncli": "./cmd/lncli"},
        [f"-tags={LND_TAGS}", f"-ldflags={ldflags}"],
    )
    return LndBinaries(version, target / "lnd", target / "lncli")


def _cargo() -> str:
    found = shutil.which("cargo")
    if found is None:
        raise BuildError(
            "the Rust toolchain (`cargo`) is not on PATH; install Rust >= 1.85 (itest/ldk's"
            " rust-version) and a C compiler (`cc`, for secp256k1-sys) to build itest/ldk"
        )
    return found


def ldk_digest(crate: Path = LDK_CRATE) -> str:
    """A digest of what the LDK program is built from: Cargo.toml, Cargo.lock and src/."""
    files = [crate / "Cargo.toml", crate / "Cargo.lock", *sorted((crate / "src").rglob("*.rs"))]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(crate).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def ensure_ldk(root: Path, crate: Path = LDK_CRATE) -> Path:
    """The ``lndmailbox-ldk`` binary of ``crate``'s current sources, built if missing."""
    target = root / f"ldk-{ldk_digest(crate)}"
    cargo_target = root / "ldk-target"
    cold = not (cargo_target / "debug").exists()

    def fill(staging: Path) -> Mapping[str, object]:
        cargo = _cargo()
        _log(
            f"building {crate} into {target} "
            f"({'cold: about a minute on 2 cores' if cold else 'incremental'})"
        )
        started = time.monotonic()
        env = {**os.environ, "CARGO_TARGET_DIR": str(cargo_target)}
        # Debug: a release build takes much longer, and the itest needs no speed from LDK.
        _run([cargo, "build", "--locked", "--manifest-path", str(crate / "Cargo.toml")], env=env)
        seconds = round(time.monotonic() - started, 1)
        shutil.copy2(cargo_target / "debug" / LDK_BINARY, staging / LDK_BINARY)
        return {
            "crate": str(crate),
            "digest": target.name.removeprefix("ldk-"),
            "profile": "debug",
            "cargo": _run([cargo, "--version"]).strip(),
            "cold": cold,
            "seconds": seconds,
            "built_at": _now(),
        }

    if (record := _install(target, [LDK_BINARY], fill)) is not None:
        _log(f"built {LDK_BINARY} in {record['seconds']}s ({'cold' if cold else 'incremental'})")
    return target / LDK_BINARY


def _ensure_chain(root: Path) -> ChainBinaries:
    btcd = ensure_btcd(root)
    lnd = {generation: ensure_lnd(root, version) for generation, version in LND_VERSIONS.items()}
    return ChainBinaries(btcd, lnd)


def ensure_chain(root: Path | None = None) -> ChainBinaries:
    """btcd and both lnds, built on first use: all that a network without LDK needs."""
    root = root or cache_root()
    with _locked(root):
        return _ensure_chain(root)


def ensure_all(root: Path | None = None) -> Binaries:
    """Every binary the itest needs, built on first use; seconds when all are cached."""
    root = root or cache_root()
    with _locked(root):
        chain = _ensure_chain(root)
        ldk = ensure_ldk(root)
    return Binaries(chain.btcd, chain.lnd, ldk)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m itest.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--cache", type=Path, default=None, help="cache directory")
    parser.add_argument("--json", action="store_true", help="print the paths as JSON")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        binaries = ensure_all(args.cache)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        data = {
            "btcd": {k: str(v) for k, v in asdict(binaries.btcd).items()},
            "lnd": {
                g.value: {k: str(v) for k, v in asdict(b).items()} for g, b in binaries.lnd.items()
            },
            "ldk": str(binaries.ldk),
        }
        print(json.dumps(data, indent=2))
    else:
        print(f"btcd {binaries.btcd.version}: {binaries.btcd.btcd.parent}")
        for generation, b in binaries.lnd.items():
            print(f"lnd {b.version} ({generation.name.lower()}): {b.lnd.parent}")
        print(f"ldk: {binaries.ldk}")
        print(f"ready in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
