"""``transcribed retry``: move failed sources back into the inbox and clear their reports.

The daemon (running or started later) then takes them as new files; the journal keeps the
earlier failure as history. Only files inside failed/ are moved, however the path is spelt:
each argument is resolved (``..``, symlinks) before it is compared with failed/, and a symlink
is never taken as a source.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from transcribed.config import Settings
from transcribed.errors import ConfigError, ExitCode
from transcribed.folders import FOLDER_KEYS, check_layout
from transcribed.logs import get_logger
from transcribed.outputs import move_to_free_name
from transcribed.paths import REPORT_SUFFIX, report_path

log = get_logger("transcribed.retry")


def _failed_sources(failed: Path) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(failed):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.endswith(REPORT_SUFFIX) or name.startswith("."):
                continue
            found.append((Path(dirpath) / name).relative_to(failed).as_posix())
    return sorted(found)


def inside_failed(raw: str, failed: Path) -> str | None:
    """``raw`` (relative to failed/, or a path from here) as a path relative to failed/, once
    resolved; None when it is not inside failed/.

    A relative argument is tried as given (``failed/x.mp3`` from its parent folder) and then
    relative to failed/ (``x.mp3``). The last component may be a link: it is refused as a
    source later, not resolved here."""
    failed_real = Path(os.path.realpath(failed))
    given = Path(raw).expanduser()
    tries = [given] if given.is_absolute() else [Path.cwd() / given, failed / given]
    for candidate in tries:
        # Resolve the folder, not the name: a link named like a source stays a link.
        real = Path(os.path.realpath(candidate.parent)) / candidate.name
        if candidate.name in ("", ".", ".."):
            continue
        if failed_real in real.parents:
            return real.relative_to(failed_real).as_posix().removesuffix(REPORT_SUFFIX)
    return None


def _is_plain_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def retry_failed(settings: Settings, paths: Sequence[str]) -> int:
    try:
        # failed/ inside the outbox would send transcripts to the inbox, done/ inside failed/
        # archived sources (paid for already) back to the inbox.
        check_layout(
            {name: Path(getattr(settings, name)).expanduser().absolute() for name in FOLDER_KEYS}
        )
    except ConfigError as exc:
        print(f"transcribed: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    failed = Path(os.path.realpath(Path(settings.failed).expanduser()))
    inbox = Path(settings.inbox).expanduser().absolute()
    refused = 0
    if paths:
        wanted = []
        for raw in paths:
            rel = inside_failed(raw, failed)
            if rel is None:
                print(
                    f"transcribed: {raw!r} is not a file inside failed/ ({failed})", file=sys.stderr
                )
                refused += 1
            else:
                wanted.append(rel)
    else:
        wanted = _failed_sources(failed) if failed.is_dir() else []
    moved = missing = 0
    for rel in wanted:
        source = failed / rel
        if not _is_plain_file(source):
            log.warning("retry_not_found", path=rel)
            missing += 1
            continue
        target, _folder = move_to_free_name(source, inbox, rel)
        (failed / report_path(rel)).unlink(missing_ok=True)
        log.info("file_requeued", path=rel, inbox_path=target)
        moved += 1
    summary = f"requeued {moved} file(s)"
    if missing:
        summary += f", {missing} not found"
    if refused:
        summary += f", {refused} refused (outside failed/)"
    print(summary)
    return 0 if not (missing or refused) else 1
