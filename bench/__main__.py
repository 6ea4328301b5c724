"""Run the benchmark scenarios, print a table per scenario and write them all to a Markdown file.

    python -m bench [--only backlog,budget] [--quick] [--out bench/results.md]

Scenarios (each its own module): backlog, mixed, big_upload, detection, startup, budget, local.
A scenario that crashes is reported as such and the others still run; misses of a target are
printed, never hidden, and do not change the exit status (these are benchmarks, not tests).
"""

from __future__ import annotations

import argparse
import compileall
import importlib
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import transcribed
from bench.common import REPO, Table

SCENARIOS = ("backlog", "mixed", "big_upload", "detection", "startup", "budget", "local")
DEFAULT_OUT = REPO / "bench" / "results.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return 0.0


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else "unknown"


def header(quick: bool, started: datetime) -> str:
    """What the figures were measured on."""
    lines = [
        "# transcribed benchmarks" + (" (QUICK smoke run: reduced sizes)" if quick else ""),
        "",
        "Written by `python -m bench` (`make bench`); overwritten on every run.",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores",
        f"- RAM: {ram_gb():.1f} GB",
        f"- Python {platform.python_version()} ({sys.executable}), {platform.platform()}",
        f"- source: {git_revision()}",
        f"- load average at start: {os.getloadavg()[0]:.2f}",
        "- the fake AssemblyAI server runs in its own process; every client runs as a "
        "subprocess and its CPU seconds come from wait4(); MB = 10^6 bytes.",
        "- the daemon's package is byte-compiled first, as a regular `pip install` leaves it "
        "(an editable install under PYTHONDONTWRITEBYTECODE=1 would recompile it on every "
        "start, which the SDK's installed package never does).",
    ]
    if quick:
        lines.append(
            "- **QUICK run**: smaller backlogs and files, fewer rounds; figures are for a smoke "
            "test only, not for comparison with the targets."
        )
    return "\n".join(lines) + "\n"


def crashed(name: str, error: BaseException) -> Table:
    table = Table(f"{name}: the scenario did not complete", ["error"])
    table.add(f"{type(error).__name__}: {error}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown results file")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else SCENARIOS
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")

    started = datetime.now(UTC).astimezone()
    compileall.compile_dir(Path(transcribed.__file__).parent, quiet=1)
    sections = [header(args.quick, started)]
    print(sections[0])
    failures = 0
    for name in (s for s in SCENARIOS if s in chosen):  # a fixed order: local, the CPU hog, last
        module = importlib.import_module(f"bench.{name}")
        run: Callable[[bool], list[Table]] = module.run
        began = time.monotonic()
        load = os.getloadavg()[0]
        print(f"## {name}{' (quick)' if args.quick else ''}\n", flush=True)
        try:
            tables = run(args.quick)
        except Exception as exc:
            traceback.print_exc()
            tables = [crashed(name, exc)]
            failures += 1
        took = time.monotonic() - began
        text = f"## {name}{' (quick)' if args.quick else ''}\n\n" + "\n".join(
            t.render() for t in tables
        )
        text += f"\n_{name}: {took:.0f} s; load average before {load:.2f}, after "
        text += f"{os.getloadavg()[0]:.2f}._\n"
        print(text.split("\n", 2)[2], flush=True)
        sections.append(text)
        args.out.write_text("\n".join(sections))  # partial results survive a later crash
    total = (datetime.now(UTC).astimezone() - started).total_seconds()
    print(f"all scenarios: {total:.0f} s; results written to {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
