"""``make bench`` (``python -m bench``): every figure the issues ask for, with its baseline.

Each figure is a ratio to a baseline measured in the same run (or, for ingest, to lnd's
fixed default ceiling), printed with the raw numbers and the target:

1. peel vs the bare crypto floor (:mod:`bench.peel`);
2. sustained ingest through simnet (own process, ECDH over gRPC) and Redis, vs lnd's
   default global onion-message ceiling: the worst case (a fresh blinded path per message,
   every message stored), the realistic mix (a handful of reused paths, 90% to online
   peers, 10% stored), its floor (simnet alone) and, on lnd 0.21, the mix with a hot
   standby journaling; each with the CPU per message of every process;
3. draining queued messages to a reconnecting peer, vs the same number of bare sends;
4. Redis memory per stored message, vs the message's size;
5. store and deliver per message on a primary with a replica, waiting for it (WAIT,
   WAITAOF) vs not (:mod:`bench.durability`).

These machines are shared and noisy: run it several times before trusting a figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from simnet import Personality

from bench import durability, mailbox, peel
from lndmailbox.lnd import Transport
from lndmailbox.logs import configure_logging


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "?"


def machine() -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpus} CPUs (nproc) {_cpu_model()}, Python {platform.python_version()}, "
        f"load average {load}"
    )


def _peel_figures() -> tuple[str, float | None, float | None, float | None]:
    """Runs bench.peel; returns its lines and (us per peel, us of crypto floor, ratio)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        peel.run()
    text = out.getvalue()

    def number(label: str) -> float | None:
        match = re.search(re.escape(label) + r"\s+([0-9.]+)", text)
        return float(match.group(1)) if match else None

    return (
        text,
        number("time per peel"),
        number("crypto floor"),
        number("ratio peel / floor"),
    )


def _row(
    figure: str, lnd: str, measured: str, baseline: str, ratio: float, target: str, cpu: str = ""
) -> str:
    ok = _meets(ratio, target) if target else ""
    line = (
        f"{figure:<33} {lnd:<5} {measured:>12}  {baseline:<34} {ratio:6.2f}x  {target:<7} {ok:<6}"
    )
    return f"{line} {cpu}".rstrip()


def _cpu_per_message(cpu: float, messages: int) -> str:
    return f"{cpu * 1e6 / messages:.0f} us"


def _meets(ratio: float, target: str) -> str:
    op, _, value = target.partition(" ")
    limit = float(value.rstrip("x"))
    good = ratio >= limit if op == ">=" else ratio <= limit
    return "ok" if good else "MISSED"


def table(
    peel_figures: tuple[float | None, float | None, float | None],
    results: Sequence[mailbox.Figures],
) -> list[str]:
    lines = [
        f"{'figure':<33} {'lnd':<5} {'measured':>12}  {'baseline (same run)':<34} "
        f"{'ratio':>7}  {'target':<7} {'':<6} daemon CPU/msg",
    ]
    ceiling = f"lnd global ceiling {mailbox.LND_CEILING_MSGS:.0f} msg/s"
    per_peel, floor, ratio = peel_figures
    if per_peel is not None and floor is not None and ratio is not None:
        lines.append(
            _row(
                "peel, forwarding hop",
                "-",
                f"{per_peel:.1f} us",
                f"crypto floor {floor:.1f} us",
                ratio,
                "<= 1.5x",
            )
        )
    for r in results:
        lnd = r.personality.value
        lines.append(
            _row(
                "ingest: peel, decide, store",
                lnd,
                f"{r.ingest.rate:.0f} msg/s",
                ceiling,
                r.ingest.ratio,
                f">= {mailbox.INGEST_TARGET:g}x",
                _cpu_per_message(r.ingest.cpu.daemon, r.ingest.messages),
            )
        )
        lines.append(
            _row(
                "  signer round trips alone, 2/msg",
                lnd,
                f"{r.signer.rate / 2:.0f} msg/s",
                f"lnd global ceiling {mailbox.LND_CEILING_MSGS:.0f} msg/s",
                r.signer.rate / 2 / mailbox.LND_CEILING_MSGS,
                "",
            )
        )
        lines.append(
            _row(
                "  its floor: stream + peel only",
                lnd,
                f"{r.floor.rate:.0f} msg/s",
                f"lnd global ceiling {mailbox.LND_CEILING_MSGS:.0f} msg/s",
                r.floor.rate / mailbox.LND_CEILING_MSGS,
                "",
            )
        )
        mix_target = f">= {mailbox.MIX_TARGET:g}x" if r.transport is Transport.NATIVE else ""
        for mix in r.mixes:
            label = (
                "  the same, hot standby on" if mix.standby else f"mix: {mix.paths} paths, 10% kept"
            )
            lines.append(
                _row(
                    label,
                    lnd,
                    f"{mix.rate:.0f} msg/s",
                    ceiling,
                    mix.ratio,
                    mix_target,
                    _cpu_per_message(mix.cpu.daemon, mix.messages)
                    + ("  CHECKS FAILED" if mix.problems else ""),
                )
            )
        if r.alone is not None:
            lines.append(
                _row(
                    "  its floor: simnet alone",
                    lnd,
                    f"{r.alone.rate:.0f} msg/s",
                    ceiling,
                    r.alone.rate / mailbox.LND_CEILING_MSGS,
                    "",
                )
            )
        lines.append(
            _row(
                f"drain {r.drain.messages} to returning peer",
                lnd,
                f"{r.drain.seconds:.3f} s",
                f"{r.drain.messages} bare sends {r.drain.bare:.3f} s",
                r.drain.ratio,
                f"<= {mailbox.DRAIN_TARGET:g}x",
            )
        )
        for m in r.memory:
            lines.append(
                _row(
                    f"Redis memory, {m.what}",
                    lnd,
                    f"{m.per_message:.0f} B/msg",
                    f"message {mailbox.MESSAGE_SIZE} B (33 + {mailbox.PACKET_SIZE})",
                    m.ratio,
                    f"<= {mailbox.MEMORY_TARGET:g}x",
                )
            )
    return lines


def durability_rows(figures: Sequence[durability.Figure]) -> list[str]:
    """One row per wait mode, each against wait off on the same fsync policy."""
    rows = []
    base = figures[0]
    for f in figures:
        if f.mode.startswith("off"):
            base = f
            continue
        rows.append(
            _row(
                f"store+deliver, {f.mode}",
                "-",
                f"{f.per_message * 1e6:.0f} us/msg",
                f"{base.mode}: {base.per_message * 1e6:.0f} us/msg",
                f.per_message / base.per_message,
                "",
            )
        )
    return rows


def details(r: mailbox.Figures) -> list[str]:
    i, d = r.ingest, r.drain
    per = 1e6 / i.messages
    dropped = {k: v for k, v in i.counters.items() if k.startswith(("dropped", "lost"))}
    lines = [
        f"lnd {r.personality.release} ({r.transport.value} transport):",
        f"  ingest   {i.messages} messages in {i.seconds:.3f}s; simnet accepted them in "
        f"{i.inject_seconds:.3f}s; outcomes at simnet {i.outcomes}",
        f"           CPU per message: daemon {i.cpu.daemon * per:.0f} us, simnet "
        f"{i.cpu.simnet * per:.0f} us, Redis {i.cpu.redis * per:.0f} us "
        f"(wall {i.seconds * per:.0f} us)",
        f"           one core each would allow: daemon {_per_second(i.messages, i.cpu.daemon)}"
        f", simnet {_per_second(i.messages, i.cpu.simnet)} msg/s",
        f"           dropped/lost counters: {dropped or 'none'}",
        f"  signer   {r.signer.count} DeriveSharedKey calls (64 in flight) in "
        f"{r.signer.seconds:.3f}s = {r.signer.rate:.0f}/s; CPU per call here "
        f"{r.signer.cpu.daemon * 1e6 / r.signer.count:.0f} us, simnet "
        f"{r.signer.cpu.simnet * 1e6 / r.signer.count:.0f} us",
        f"  floor    {r.floor.count} messages only read and peeled through simnet's signer "
        f"in {r.floor.seconds:.3f}s = {r.floor.rate:.0f}/s; CPU per message here "
        f"{r.floor.cpu.daemon * 1e6 / r.floor.count:.0f} us, simnet "
        f"{r.floor.cpu.simnet * 1e6 / r.floor.count:.0f} us; ingest reaches "
        f"{i.rate / r.floor.rate:.2f}x of it",
        f"  drain    {d.messages} in {d.seconds:.3f}s ({d.messages / d.seconds:.0f}/s); bare "
        f"sends {d.bare_before:.3f}s before, {d.bare_after:.3f}s after",
        f"           CPU per message in this process: drain {d.daemon_cpu * 1e6 / d.messages:.0f}"
        f" us, bare send {d.bare_cpu * 1e6 / d.messages:.0f} us; bob peeled "
        f"{d.peeled}/{d.received} ({d.distinct} distinct payloads)",
    ]
    lines += _mix_details(r)
    for m in r.memory:
        lines.append(
            f"  memory   {m.what}: {m.messages} messages, queue {m.queue_bytes} B + dedup "
            f"{m.dedup_bytes} B = {m.per_message:.0f} B/message"
        )
    return lines


def _mix_details(r: mailbox.Figures) -> list[str]:
    lines = []
    for m in r.mixes:
        per = 1e6 / m.messages
        standby = f", standby {m.cpu.standby * per:.0f} us" if m.standby else ""
        busy = {"daemon": m.cpu.daemon, "simnet": m.cpu.simnet, "Redis": m.cpu.redis}
        if m.standby:
            busy["standby"] = m.cpu.standby
        busiest = max(busy, key=lambda k: busy[k])
        others = ", ".join(f"{k} {v / m.seconds:.2f}" for k, v in busy.items() if k != busiest)
        lines += [
            f"  {'standby' if m.standby else 'mix':<8} {m.messages} messages over {m.paths} "
            f"blinded paths ({m.online} to online peers, {m.offline} stored) decided in "
            f"{m.seconds:.3f}s; simnet accepted them in {m.inject_seconds:.3f}s; outcomes at "
            f"simnet {m.outcomes}",
            f"           CPU per message: daemon {m.cpu.daemon * per:.0f} us, simnet "
            f"{m.cpu.simnet * per:.0f} us, Redis {m.cpu.redis * per:.0f} us{standby} "
            f"(wall {m.seconds * per:.0f} us)",
            f"           one core each would allow: daemon {_per_second(m.messages, m.cpu.daemon)}"
            f", simnet {_per_second(m.messages, m.cpu.simnet)} msg/s; busiest: {busiest} at "
            f"{busy[busiest] / m.seconds:.2f} of a core ({others})",
            f"           checked: counters moved {m.decided}; online recipients received "
            f"{m.received} and peeled the last {m.peeled}/{m.checked} to distinct payloads; "
            f"{m.queued} queued offline"
            + (f"; the standby read {m.standby_read}" if m.standby else ""),
            *(f"           CHECK FAILED: {problem}" for problem in m.problems),
        ]
        if r.alone is not None and not m.standby:
            a = r.alone
            lines.append(
                f"  alone    simnet took {a.count} mix messages, a bare reader here counting "
                f"them, in {a.seconds:.3f}s = {a.rate:.0f}/s; CPU per message here "
                f"{a.cpu.daemon * 1e6 / a.count:.0f} us, simnet {a.cpu.simnet * 1e6 / a.count:.0f}"
                f" us; the mix reaches {m.rate / a.rate:.2f}x of it"
            )
    return lines


def _per_second(messages: int, cpu: float) -> str:
    return f"{messages / cpu:.0f}" if cpu > 0 else "-"


async def _mailbox(args: argparse.Namespace) -> list[mailbox.Figures]:
    results = []
    for version in args.lnd:
        config = mailbox.Config(
            personality=Personality(version),
            messages=args.messages,
            warmup=args.warmup,
            recipients=args.recipients,
            drain=args.drain,
            redis_url=args.redis_url,
            reuse_paths=args.reuse_paths,
            mix=not args.no_mix,
            mix_paths=args.mix_paths,
            standby=not args.no_mix and version in args.standby,
            profile=args.profile,
        )
        results.append(await mailbox.run(config, say=lambda s: print(f"  {s}", flush=True)))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--messages", type=int, default=5000, help="ingest messages (timed)")
    parser.add_argument("--warmup", type=int, default=300, help="ingest warm-up messages")
    parser.add_argument("--recipients", type=int, default=100, help="offline ingest recipients")
    parser.add_argument("--drain", type=int, default=1000, help="messages drained to bob")
    parser.add_argument(
        "--lnd",
        nargs="+",
        choices=[p.value for p in Personality],
        default=["0.21", "0.20"],
        help="simnet personalities to measure (default: both)",
    )
    parser.add_argument(
        "--reuse-paths",
        action="store_true",
        help="messages to one recipient share its blinded path, as with an offer's paths "
        "(default: a fresh path per message, the costlier case)",
    )
    parser.add_argument(
        "--mix-paths",
        type=int,
        default=20,
        help="blinded paths (one per recipient) in the realistic mix; one in ten to an "
        "offline peer, at least one (default: 20)",
    )
    parser.add_argument(
        "--standby",
        nargs="*",
        metavar="LND",
        choices=[p.value for p in Personality],
        default=["0.21"],
        help="personalities whose mix is measured again with a hot standby journaling "
        "(default: 0.21; none: --standby alone)",
    )
    parser.add_argument(
        "--no-mix", action="store_true", help="leave out the mix rows (and the standby's)"
    )
    parser.add_argument("--skip-peel", action="store_true", help="leave out the peel figure")
    parser.add_argument(
        "--skip-durability", action="store_true", help="leave out the replica wait's rows"
    )
    parser.add_argument("--redis-url", help="use this (empty) Redis instead of starting one")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the daemon's log level (default: info, the daemon's own default); the log "
        "goes to a file, its cost is part of the figures",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print cProfiles: the daemon during ingest, the drain and the mix; simnet during "
        "ingest, the mix and its floor",
    )
    args = parser.parse_args(argv)
    if args.mix_paths < 2:
        parser.error("--mix-paths must be at least 2 (an online and an offline recipient)")

    print(f"lndmailbox bench on {machine()}")
    print("shared machines are noisy: compare ratios from several runs, not one figure\n")
    with tempfile.TemporaryDirectory(prefix="lndmailbox-bench-log-") as tmp:
        log_path = Path(tmp) / "daemon.log"
        with log_path.open("w") as log_file:
            configure_logging(args.log_level, "text", stream=log_file)
            peel_figures: tuple[float | None, float | None, float | None] = (None, None, None)
            if not args.skip_peel:
                text, *numbers = _peel_figures()
                print(text)
                peel_figures = (numbers[0], numbers[1], numbers[2])
            print("mailbox (daemon in this process; simnet in its own; real Redis)")
            results = asyncio.run(_mailbox(args))
            waits: list[durability.Figure] = []
            if not args.skip_durability:
                print("replica wait (primary + 1 replica, store calls in this process)")
                waits = asyncio.run(durability.measure(say=lambda s: print(f"  {s}", flush=True)))
            log_lines = log_path.read_text().count("\n")
    print()
    for r in results:
        print("\n".join(details(r)))
        if r.profile:
            print(r.profile)
    print(f"  (the daemon wrote {log_lines} log lines at level {args.log_level})")
    print()
    print("\n".join(table(peel_figures, results) + durability_rows(waits)))
    failed = [
        (r.personality.value, problem) for r in results for m in r.mixes for problem in m.problems
    ]
    for version, problem in failed:
        print(f"CHECK FAILED (lnd {version}): {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
