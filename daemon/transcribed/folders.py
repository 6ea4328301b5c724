"""The daemon's folders: checked and created at start-up, before anything reads or writes them."""

from __future__ import annotations

import os
from pathlib import Path

from transcribed.config import Settings
from transcribed.errors import ConfigError
from transcribed.paths import TEMP_PREFIX

FOLDER_KEYS = ("inbox", "outbox", "done", "failed", "state_dir")


def prepare_folders(settings: Settings) -> dict[str, Path]:
    """Check the inbox and create the other folders; ``ConfigError`` names the bad one."""
    folders = {name: Path(getattr(settings, name)).expanduser().absolute() for name in FOLDER_KEYS}
    inbox = folders["inbox"]
    if not inbox.is_dir():
        raise ConfigError(f"inbox {inbox} does not exist or is not a folder")
    if not os.access(inbox, os.R_OK | os.X_OK | os.W_OK):
        raise ConfigError(f"inbox {inbox} is not readable and writable by this user")
    for name in ("outbox", "done", "failed", "state_dir"):
        folder = folders[name]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{name} {folder} cannot be created: {exc.strerror}") from exc
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"{name} {folder} is not writable by this user")
    return folders


def remove_stale_temp_files(*roots: Path) -> None:
    """Temp files left by a crash mid-write are never visible results; clear them."""
    for root in roots:
        for stale in root.rglob(f"{TEMP_PREFIX}*"):
            stale.unlink(missing_ok=True)
