"""``transcribed retry``: move failed sources back into the inbox and clear their reports.

The daemon (running or started later) then takes them as new files; the journal keeps the
earlier failure as history.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from transcribed.config import Settings
from transcribed.logs import get_logger
from transcribed.outputs import move_file
from transcribed.paths import REPORT_SUFFIX, numbered, report_path

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


def retry_failed(settings: Settings, paths: Sequence[str]) -> int:
    failed = Path(settings.failed).expanduser().absolute()
    inbox = Path(settings.inbox).expanduser().absolute()
    if paths:
        wanted = []
        for raw in paths:
            candidate = Path(raw)
            rel = (
                candidate.absolute().relative_to(failed).as_posix()
                if candidate.is_absolute() or candidate.absolute().is_relative_to(failed)
                else candidate.as_posix()
            )
            wanted.append(rel.removesuffix(REPORT_SUFFIX))
    else:
        wanted = _failed_sources(failed) if failed.is_dir() else []
    moved = missing = 0
    for rel in wanted:
        source = failed / rel
        if not source.is_file() or source.is_symlink():
            log.warning("retry_not_found", path=rel)
            missing += 1
            continue
        target, n = rel, 1
        while (inbox / target).exists():
            n += 1
            target = numbered(rel, n)
        move_file(source, inbox / target)
        (failed / report_path(rel)).unlink(missing_ok=True)
        log.info("file_requeued", path=rel, inbox_path=target)
        moved += 1
    print(f"requeued {moved} file(s)" + (f", {missing} not found" if missing else ""))
    return 0 if not missing else 1
