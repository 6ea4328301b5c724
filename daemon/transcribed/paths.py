"""Which inbox files are taken, and where each one's results and source go.

Pure functions over paths and names: no I/O here except :func:`safe_lstat` and
:func:`is_inside`, so the mapping can be property-tested.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".temp", ".swp")
#: Prefix of the temp files this daemon writes; always a dotfile, so it is never taken as input.
TEMP_PREFIX = ".transcribed-tmp-"
#: Longest file name (bytes) on the file systems we write to.
NAME_MAX = 255
#: The longest suffix added to an output base (".json").
OUTPUT_SUFFIX_BYTES = 5
REPORT_SUFFIX = ".error.json"


def fit_name(name: str, extra_bytes: int) -> str:
    """``name``, shortened if ``name`` + ``extra_bytes`` would pass NAME_MAX.

    A shortened name keeps its start and ends with a hash of the whole name, so two long
    names that share a prefix still map to different names.
    """
    raw = name.encode()
    if len(raw) + extra_bytes <= NAME_MAX:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:12]
    room = NAME_MAX - extra_bytes - len(digest) - 1
    return f"{raw[:room].decode('utf-8', errors='ignore')}~{digest}"


def _fit_last(rel: PurePosixPath, extra_bytes: int) -> str:
    return rel.with_name(fit_name(rel.name, extra_bytes)).as_posix()


def report_path(rel_path: str) -> str:
    """Where the error report of a source at ``rel_path`` in failed/ goes."""
    rel = PurePosixPath(rel_path)
    return _fit_last(rel, len(REPORT_SUFFIX)) + REPORT_SUFFIX


def is_candidate_name(rel_path: str, patterns: Sequence[str]) -> bool:
    """True when an inbox-relative path looks like input: matches a pattern, case-insensitively,
    and neither it nor any parent folder is hidden or a temp/partial download."""
    parts = PurePosixPath(rel_path).parts
    if not parts or any(part.startswith(".") for part in parts):
        return False
    name = parts[-1].lower()
    if name.endswith(TEMP_SUFFIXES) or name.startswith("~"):
        return False
    return any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in patterns)


def is_hidden_dir(name: str) -> bool:
    return name.startswith(".")


def safe_lstat(path: Path) -> os.stat_result | None:
    """``lstat`` that answers None for anything but a regular file (symlinks included)."""
    try:
        info = path.lstat()
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def is_inside(path: Path, root: Path, *, root_real: str | None = None) -> bool:
    """True when ``path``'s real location is inside ``root``'s real location.

    ``root_real`` is ``os.path.realpath(root)`` when the caller already knows it (a check per
    job need not resolve the same root every time)."""
    try:
        real = os.path.realpath(path)
        base = root_real if root_real is not None else os.path.realpath(root)
    except OSError:
        return False
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def relative_posix(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def output_base_candidates(rel_path: str) -> Iterator[str]:
    """Output names (without format extension) to try for a source, best first.

    ``talks/a.mp3`` -> ``talks/a``, then ``talks/a.mp3`` (so ``a.wav`` beside ``a.mp3`` gets
    ``a.wav.txt``), then numbered ``talks/a (2)``, ``talks/a (3)``, ... Lazy: the caller
    usually needs only the first.
    """
    rel = PurePosixPath(rel_path)
    stem = rel.stem if rel.suffix and rel.stem not in ("", ".", "..") else rel.name
    seen: set[str] = set()
    for name in itertools.chain((stem, rel.name), (f"{stem} ({n})" for n in itertools.count(2))):
        base = rel.with_name(fit_name(name, OUTPUT_SUFFIX_BYTES)).as_posix()
        if base not in seen:
            seen.add(base)
            yield base


def numbered(rel_path: str, n: int) -> str:
    """``a/b.mp3`` -> ``a/b (n).mp3``: a free name for a source moved into done/ or failed/."""
    rel = PurePosixPath(rel_path)
    stem = fit_name(rel.stem, len(f" ({n})") + len(rel.suffix.encode()))
    return rel.with_name(f"{stem} ({n}){rel.suffix}").as_posix()
