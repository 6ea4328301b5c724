"""Throughput of the local engine: faster-whisper on its own versus through LocalBackend.

Builds a batch of clips from ``samples/`` (each clip a few samples joined, written as WAV in a
temporary folder), then reports seconds of audio per wall-clock second for:

- faster-whisper called directly in one process, with ``cpu_threads`` 1 and 2;
- the direct ceiling on this machine: 2 processes with 1 thread each;
- LocalBackend with its default settings (the daemon's numbers);
- with ``--sweep``, LocalBackend with workers x threads 2x1 and 1x2 and beam 1 and 5, plus the
  word error rate of each beam size on the samples.

Model loading is timed separately and left out of the throughput figures. Run it on an idle
machine; ``--repeat`` keeps the best of several runs::

    .venv/bin/python bench/local_engine.py [--clips 12] [--join 3] [--repeat 2] [--sweep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import resource
import statistics
import tempfile
import time
import wave
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"

from transcribed.backends import Job
from transcribed.backends.local import LocalBackend, resolve_model
from transcribed.config import LocalSettings

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
RATE = 16_000
DIRECT_1 = "direct, 1 process x 1 thread"
DIRECT_2 = "direct, 1 process x 2 threads"
CEILING = "direct, 2 processes x 1 thread (ceiling)"
BACKEND = "LocalBackend, defaults"
WORDS = "zero one two three four five six seven eight nine ten eleven twelve"
NUMBERS = dict(enumerate(WORDS.split(" ")))


class Quiet:
    """Checkpoints that record nothing."""

    def uploaded(self, upload_url: str) -> None: ...
    async def submitting(self) -> None: ...
    def submitted(self, transcript_id: str) -> None: ...
    def upload_lost(self) -> None: ...
    def phase(self, name: str) -> None: ...


def make_batch(folder: Path, clips: int, join: int) -> tuple[list[Path], float]:
    """``clips`` WAV files, each ``join`` samples back to back; returns them and total seconds."""
    import av
    import numpy as np

    pieces = []
    for path in sorted(SAMPLES.glob("*.mp3")):
        with av.open(str(path)) as container:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
            frames = [
                o.to_ndarray() for f in container.decode(audio=0) for o in resampler.resample(f)
            ]
            frames += [o.to_ndarray() for o in resampler.resample(None)]
        pieces.append(np.concatenate([f.reshape(-1) for f in frames]))
    pause = np.zeros(RATE // 2, dtype=np.int16)
    paths, total = [], 0.0
    for index in range(clips):
        chosen = [pieces[(index + k) % len(pieces)] for k in range(join)]
        audio = np.concatenate([part for piece in chosen for part in (piece, pause)])
        path = folder / f"clip{index:02d}.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(RATE)
            out.writeframes(audio.astype(np.int16).tobytes())
        paths.append(path)
        total += len(audio) / RATE
    return paths, total


# --- faster-whisper directly ---------------------------------------------------------------

_MODEL: Any = None


def _load(model_path: str, compute_type: str, threads: int) -> float:
    global _MODEL
    from faster_whisper import WhisperModel

    began = time.perf_counter()
    _MODEL = WhisperModel(
        model_path, device="cpu", compute_type=compute_type, cpu_threads=threads, num_workers=1
    )
    return time.perf_counter() - began


def _decode(path: str, beam_size: int) -> str:
    segments, _ = _MODEL.transcribe(
        path, language="en", beam_size=beam_size, word_timestamps=True, vad_filter=False
    )
    return " ".join(s.text.strip() for s in segments)


def _settle(seconds: float) -> None:
    time.sleep(seconds)


def direct_one_process(
    paths: Sequence[Path], settings: LocalSettings, threads: int
) -> tuple[float, float]:
    """Wall seconds for the batch in this process, and for loading the model beforehand."""
    load_s = _load(str(resolve_model(settings.model)), settings.compute_type, threads)
    began = time.perf_counter()
    for path in paths:
        _decode(str(path), settings.beam_size)
    return time.perf_counter() - began, load_s


def direct_processes(paths: Sequence[Path], settings: LocalSettings, processes: int) -> float:
    """Wall seconds for the batch over ``processes`` spawned processes of 1 thread each."""
    context = multiprocessing.get_context("spawn")
    init = (str(resolve_model(settings.model)), settings.compute_type, 1)
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_load, initargs=init) as ex:
        list(ex.map(_settle, [0.5] * processes))  # every process has loaded its model
        began = time.perf_counter()
        list(ex.map(_decode, [str(p) for p in paths], [settings.beam_size] * len(paths)))
        return time.perf_counter() - began


# --- through LocalBackend ------------------------------------------------------------------


async def _backend_run(
    paths: Sequence[Path], settings: LocalSettings
) -> tuple[float, float, list[str]]:
    backend = LocalBackend(settings, ["txt", "json", "srt", "vtt"])
    began = time.perf_counter()
    await backend.start()
    start_s = time.perf_counter() - began
    try:
        began = time.perf_counter()
        jobs = [Job(i, p, p.name, p.stat().st_size) for i, p in enumerate(paths)]
        results = await asyncio.gather(*(backend.transcribe(j, Quiet()) for j in jobs))
        return time.perf_counter() - began, start_s, [r.text for r in results]
    finally:
        await backend.close()


def through_backend(
    paths: Sequence[Path], settings: LocalSettings
) -> tuple[float, float, list[str]]:
    """Wall seconds for the batch, the start-up time, and the texts."""
    return asyncio.run(_backend_run(paths, settings))


def wer(truth: str, text: str) -> float:
    import jiwer

    def norm(s: str) -> str:
        words = re.sub(r"[^a-z0-9' ]+", " ", s.lower()).split()
        return " ".join(NUMBERS.get(int(w), w) if w.isdigit() else w for w in words)

    return float(jiwer.wer(norm(truth), norm(text)))


def cpu_seconds() -> float:
    """User + system CPU of this process and of its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12, help="clips in the batch (>= 10)")
    parser.add_argument("--join", type=int, default=3, help="samples joined into each clip")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; each figure is the best")
    parser.add_argument("--sweep", action="store_true", help="also compare backend settings")
    args = parser.parse_args()
    defaults = LocalSettings()
    loads: list[float] = []
    startups: list[float] = []

    def direct(threads: int) -> Callable[[Sequence[Path]], float]:
        def run(paths: Sequence[Path]) -> float:
            wall, load_s = direct_one_process(paths, defaults, threads)
            loads.append(load_s)
            return wall

        return run

    def backend(settings: LocalSettings) -> Callable[[Sequence[Path]], float]:
        def run(paths: Sequence[Path]) -> float:
            wall, start_s, _ = through_backend(paths, settings)
            startups.append(start_s)
            return wall

        return run

    configs: dict[str, Callable[[Sequence[Path]], float]] = {
        DIRECT_1: direct(1),
        DIRECT_2: direct(2),
        CEILING: lambda paths: direct_processes(paths, defaults, 2),
        BACKEND: backend(defaults),
    }
    if args.sweep:
        for workers, threads in ((2, 1), (1, 2)):
            for beam in (1, 5):
                settings = LocalSettings(
                    workers=workers, threads_per_worker=threads, beam_size=beam
                )
                configs[f"LocalBackend, {workers}x{threads}, beam {beam}"] = backend(settings)
    walls: dict[str, list[float]] = {label: [] for label in configs}
    cpus: dict[str, list[float]] = {label: [] for label in configs}

    with tempfile.TemporaryDirectory() as tmp:
        paths, audio_s = make_batch(Path(tmp), max(args.clips, 10), args.join)
        print(f"batch: {len(paths)} clips, {audio_s:.1f}s of audio; cores: {os.cpu_count()}; "
              f"load average before: {os.getloadavg()[0]:.2f}")  # fmt: skip
        print(f"defaults: {defaults.model} {defaults.compute_type} beam {defaults.beam_size}, "
              f"workers {defaults.workers} x threads {defaults.threads_per_worker}")  # fmt: skip
        # Rounds interleave the configurations, so that a busy spell hurts them all alike.
        for _ in range(max(args.repeat, 1)):
            for label, run in configs.items():
                cpu = cpu_seconds()
                walls[label].append(run(paths))
                cpus[label].append(cpu_seconds() - cpu)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"model load in one process: best {min(loads):.2f}s")
    print(f"LocalBackend start-up (spawn {defaults.workers} + load): best {min(startups):.2f}s")

    print("\n(wall: best and median of the rounds; cpu: least total CPU, start-up included)")
    header = f"{'configuration':<40} {'best s':>7} {'median s':>9} {'cpu s':>7}"
    print(f"{header} {'audio s / wall s':>17}")
    for label, runs in walls.items():
        print(
            f"{label:<40} {min(runs):>7.2f} {statistics.median(runs):>9.2f} "
            f"{min(cpus[label]):>7.2f} {audio_s / min(runs):>17.1f}"
        )
    single = min(min(walls[DIRECT_1]), min(walls[DIRECT_2]))
    ceiling, ours = min(walls[CEILING]), min(walls[BACKEND])
    print(f"\nbest direct single process: {audio_s / single:6.1f} x real time")
    print(f"direct ceiling (2 x 1):     {audio_s / ceiling:6.1f} x real time")
    print(f"LocalBackend (defaults):    {audio_s / ours:6.1f} x real time")
    print(f"ratio LocalBackend / best direct single process: {single / ours:.2f}")
    print(f"ratio LocalBackend / direct ceiling:             {ceiling / ours:.2f}")
    if args.sweep:
        print_wer()


def print_wer() -> None:
    """Word error rate per bundled sample for beam 1 and beam 5."""
    truth = json.loads((SAMPLES / "transcripts.json").read_text())
    samples = [SAMPLES / name for name in sorted(truth)]
    print(f"\n{'WER on samples/':<16}" + "".join(f"{p.name:>13}" for p in samples) + "     mean")
    for beam in (1, 5):
        _, _, texts = through_backend(samples, LocalSettings(beam_size=beam))
        errors = [wer(truth[p.name], t) for p, t in zip(samples, texts, strict=True)]
        cells = "".join(f"{e:>13.3f}" for e in errors)
        print(f"{'beam ' + str(beam):<16}{cells}{sum(errors) / len(errors):>9.3f}")


if __name__ == "__main__":
    main()
