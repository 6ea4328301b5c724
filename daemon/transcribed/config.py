"""Configuration: defaults < TOML file < environment < command line, validated once.

``load_settings`` is the only place that reads ``os.environ``. Every key can be overridden as
``TRANSCRIBED_<KEY>`` with nested tables joined by ``__``; the API key also comes from
``ASSEMBLYAI_API_KEY`` (or the older ``ASSEMBLYAI_KEY``), from ``[assemblyai] api_key_file``, or
from a systemd credential named ``assemblyai_api_key``.

The sections are msgspec structs: ``load_settings`` converts and checks the merged tree in one
call (types, bounds, unknown keys). The checks that span fields run in ``__post_init__``, so they
also hold for a struct built in code, which is otherwise taken as given.

Each key carries its description (``Meta(description=...)``) and each section its docstring:
``transcribed.config_docs`` writes docs/configuration.md from them.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct, field
from msgspec.structs import force_setattr

from transcribed.errors import ConfigError

ENV_PREFIX = "TRANSCRIBED_"
CONFIG_ENV = "TRANSCRIBED_CONFIG"
KEY_ENVS = ("ASSEMBLYAI_API_KEY", "ASSEMBLYAI_KEY")
CREDENTIAL_NAME = "assemblyai_api_key"

#: Every container format the AssemblyAI API accepts that people commonly drop.
DEFAULT_PATTERNS = [
    "*.mp3", "*.wav", "*.m4a", "*.flac", "*.ogg", "*.oga", "*.opus", "*.webm", "*.mp4",
    "*.m4v", "*.mov", "*.aac", "*.wma", "*.aif", "*.aiff", "*.amr", "*.3gp", "*.mkv", "*.mpga",
]  # fmt: skip
DEFAULT_SPEECH_MODELS = ["universal-3-pro", "universal-2"]

NonNegative = Meta(ge=0)
Positive = Meta(gt=0)


def _doc(text: str) -> Meta:
    """A key's description, for docs/configuration.md (``transcribed.config_docs``)."""
    return Meta(description=" ".join(text.split()))


class Secret:
    """A string that shows itself only to ``get_secret_value()``: never in repr, str or a dump."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class _CheckFailed(ValueError):
    """A failed check in ``__post_init__``: msgspec reports it with the path of the section it
    ran in (the error keeps this one as ``__cause__``), and ``_describe`` adds ``key``."""

    def __init__(self, key: str, message: str, related: tuple[str, ...]) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
        self.related = related


def _invalid(key: str, message: str, *related: str) -> ValueError:
    """The error for a failed check on ``key`` (relative to the section that checks it).

    ``related`` names the other keys the check compared ``key`` with (relative like ``key``),
    so that the error says where each of them was set too."""
    return _CheckFailed(key, message, related)


class _Section(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Immutable, keyword-only, unknown keys rejected. Subclasses repeat ``frozen=True`` (type
    checkers do not inherit it through ``dataclass_transform``) and ``kw_only=True`` (msgspec
    applies it to the fields of the class that sets it)."""


class WatchSettings(_Section, frozen=True, kw_only=True):
    """How the inbox is followed, and when a file in it is taken."""

    patterns: Annotated[
        list[str],
        _doc("""File name patterns (shell-style, case-insensitive) of the files taken from the
        inbox. Hidden and temporary files are never taken, whatever the patterns say (see
        [which files are taken](#which-files-are-taken))."""),
    ] = field(default_factory=lambda: list(DEFAULT_PATTERNS))
    settle_s: Annotated[
        float,
        NonNegative,
        _doc("""A file is taken once its size and modification time have stayed the same for
        this long, so a file still being copied in is not taken half-written."""),
    ] = 2.0
    rescan_interval_s: Annotated[
        float,
        Positive,
        _doc("Interval of full rescans of the inbox, which catch anything the events missed."),
    ] = 30.0
    force_polling: Annotated[
        bool,
        _doc("""Poll the file system instead of using inotify: needed for NFS and SMB shares,
        where inotify sees no changes made by other machines."""),
    ] = False
    poll_delay_ms: Annotated[
        int, Meta(ge=50), _doc("How often to poll, in milliseconds, when polling.")
    ] = 1000


class AssemblyAISettings(_Section, frozen=True, kw_only=True):
    """The AssemblyAI backend: the key, the endpoint, concurrency, the request budget,
    polling and webhooks."""

    api_key: Annotated[
        Secret | None,
        _doc("""The API key. Better kept out of the file: see [the API key](#the-api-key) for
        every source and their order. It never appears in a log line, an error report or
        `transcribed status`."""),
    ] = None
    api_key_file: Annotated[
        Path | None,
        _doc("""A file holding the API key (surrounding whitespace is ignored); read when no
        `api_key` is set."""),
    ] = None
    base_url: Annotated[
        str,
        _doc("""The API's address: `https://api.eu.assemblyai.com` for EU data residency.
        Starts with `http://` or `https://`; a trailing `/` is dropped."""),
    ] = "https://api.assemblyai.com"
    max_concurrent_jobs: Annotated[
        int,
        Meta(ge=1, le=10_000),
        _doc("""The account's concurrency: how many transcripts the service processes at once
        (200 or more on paid accounts, 5 on a free one). The daemon keeps as many again
        submitted and waiting in the service's queue, so a slot freed there starts the next job
        at once instead of waiting for an upload and a submit: at most twice this many jobs are
        in flight (uploading, submitted, queued or processing)."""),
    ] = 200
    max_concurrent_uploads: Annotated[
        int, Meta(ge=1, le=64), _doc("Uploads at once; a few keep each upload fast.")
    ] = 4
    requests_per_s: Annotated[
        float,
        Positive,
        _doc("""Sustained rate of the request budget (a token bucket) that every API request
        shares. Status sweeps use at most half of it, and so do the jobs' own polls."""),
    ] = 40.0
    request_burst: Annotated[
        int,
        Meta(ge=1),
        _doc("""Requests that may go out at once before `requests_per_s` applies. Any 5 minutes
        then see at most `request_burst + 300 * requests_per_s` requests (13,000 with the
        defaults, against the account's 20,000); the daemon logs
        `request_budget_above_account_limit` at start-up when the two allow more. The
        bucket is per process: lower it when a timer starts `run --once` every few
        minutes, or other clients share the key."""),
    ] = 1000
    poll_min_s: Annotated[
        float, Positive, _doc("Shortest interval between one job's own status polls.")
    ] = 1.0
    poll_max_s: Annotated[
        float,
        Positive,
        _doc("""Longest interval between one job's own status polls. Every job polls at least
        this often as a safety net, even when sweeps or webhooks tell it when it is done.
        At least `poll_min_s`."""),
    ] = 20.0
    retry_max_backoff_s: Annotated[
        float,
        Positive,
        _doc("""Longest wait between retries of a request that failed in passing (timeout,
        dropped connection, 429, 5xx). Such a request is retried until it succeeds."""),
    ] = 60.0
    connect_timeout_s: Annotated[
        float, Positive, _doc("Time allowed to open a connection to the API.")
    ] = 15.0
    read_timeout_s: Annotated[
        float,
        Positive,
        _doc("Time allowed for an answer to arrive; an upload gets extra time by its size."),
    ] = 60.0
    chars_per_caption: Annotated[
        Annotated[int, Meta(ge=1)] | None,
        _doc("Most characters per caption in srt and vtt output; unset: the API's default."),
    ] = None
    stuck_after_s: Annotated[
        float,
        Positive,
        _doc("""A job still queued or processing after this long is reported (`job_stuck`)
        and then polled every 5 minutes."""),
    ] = 3 * 3600.0
    resubmit_stuck: Annotated[
        bool, _doc("Resubmit a stuck job once (it is paid again) instead of only waiting.")
    ] = False
    webhook_url: Annotated[
        str | None,
        _doc("""Public URL that reaches this daemon's `/webhook` on `http.listen` (through a
        TLS reverse proxy, say). Set, the service notifies the daemon when a transcript is
        done; unset, the daemon sweeps the account's transcript list. Needs
        `http.listen`."""),
    ] = None

    def __post_init__(self) -> None:
        if isinstance(self.api_key, str):  # built in code with a plain string: keep it hidden
            force_setattr(self, "api_key", Secret(self.api_key))
        if not self.base_url.startswith(("http://", "https://")):
            raise _invalid("base_url", "must start with http:// or https://")
        force_setattr(self, "base_url", self.base_url.rstrip("/"))
        if self.poll_max_s < self.poll_min_s:
            raise _invalid(
                "poll_max_s", f"must be at least poll_min_s ({self.poll_min_s:g})", "poll_min_s"
            )


#: Whisper's English-only models end in this suffix (``tiny.en``, ``distil-small.en``).
ENGLISH_ONLY_SUFFIX = ".en"
_LANGUAGE = re.compile(r"^(auto|[a-z]{2,3})$")


class LocalSettings(_Section, frozen=True, kw_only=True):
    """The embedded faster-whisper engine (installed with the `local` extra): no key; no
    network, unless a named model has to be fetched once (see docs/local-engine.md)."""

    model: Annotated[
        str,
        _doc("""A model name (`tiny`, `tiny.en`, `base(.en)`, `small(.en)`, `medium(.en)`,
        `large-v3`, `large-v3-turbo`, `distil-large-v3`, ... as faster-whisper names them), or
        a folder holding a CTranslate2 Whisper model. `tiny.en` comes with the `local` extra;
        any other name is fetched once into `models_dir` (`transcribed models pull NAME`
        does it ahead of time)."""),
    ] = "tiny.en"
    models_dir: Annotated[
        Path | None,
        _doc("""Where fetched models are kept (the Hugging Face hub's cache layout). Unset:
        `models` under `state_dir`."""),
    ] = None
    device: Annotated[
        Literal["auto", "cpu", "cuda"],
        _doc("""Where the model runs. `auto`: a CUDA GPU when CTranslate2 sees one, the CPU
        otherwise; the choice and its reason are logged (`local_engine_started`)."""),
    ] = "auto"
    compute_type: Annotated[
        str,
        _doc("""CTranslate2's compute type: `auto` (`float16` on a GPU, `int8` on a CPU),
        `int8`, `int8_float16`, `int8_float32`, `float16`, `float32`, ..."""),
    ] = "auto"
    beam_size: Annotated[int, Meta(ge=1, le=20), _doc("Beam width of the decoder.")] = 5
    language: Annotated[
        str,
        _doc("""Language code of the audio (`en`, `de`, ...), or `auto` to detect it per file
        (the JSON transcript then has `language_code` and `language_confidence`). An
        English-only model (`*.en`) takes only `en` or `auto`."""),
    ] = "auto"
    vad: Annotated[
        bool,
        _doc("""Skip stretches without speech (faster-whisper's bundled Silero VAD) before
        decoding: less time on silence and noise, and none of the text Whisper invents
        there."""),
    ] = False
    vad_parameters: Annotated[
        dict[str, Any],
        _doc("""With `vad`: options for faster-whisper's `VadOptions`, passed unchanged
        (`threshold`, `min_silence_duration_ms`, `speech_pad_ms`, ...); an unknown one is an
        error at start-up."""),
    ] = field(default_factory=dict)
    condition_on_previous_text: Annotated[
        bool,
        _doc("""Give the decoder the previous window's text as a prompt. More consistent
        text, but a misheard window can then repeat itself for minutes; off stops such
        loops. A segment repeated many times in a row is logged as `repetition_detected`
        either way."""),
    ] = True
    workers: Annotated[
        int,
        Meta(ge=1, le=64),
        _doc("Decoder processes, each with its own copy of the model."),
    ] = 2
    threads_per_worker: Annotated[
        int, Meta(ge=1, le=64), _doc("CPU threads of each decoder process.")
    ] = 1
    max_files_per_worker: Annotated[
        int,
        Meta(ge=0),
        _doc("""A worker is replaced by a fresh process after this many files, which bounds
        any memory a long run leaks; 0: never."""),
    ] = 200
    max_worker_rss_mb: Annotated[
        int,
        Meta(ge=0),
        _doc("""A worker whose resident memory passes this many megabytes after a file is
        replaced by a fresh process; 0: no limit."""),
    ] = 0
    timeout_factor: Annotated[
        float,
        Positive,
        _doc("""A decode that takes longer than `max(min_timeout_s, timeout_factor * audio
        length)` counts as hung: its worker is restarted and that file fails."""),
    ] = 4.0
    min_timeout_s: Annotated[
        float, Positive, _doc("The least time a decode gets before it counts as hung.")
    ] = 120.0

    def __post_init__(self) -> None:
        force_setattr(self, "language", self.language.strip().lower())
        if not _LANGUAGE.match(self.language):
            raise _invalid("language", "must be `auto` or a language code such as `en` or `de`")
        if self.model.endswith(ENGLISH_ONLY_SUFFIX) and self.language not in ("auto", "en"):
            raise _invalid(
                "language",
                f"{self.language!r} needs a multilingual model: {self.model!r} knows only "
                f"English (use {self.model.removesuffix(ENGLISH_ONLY_SUFFIX)!r}, or "
                "language = 'en' or 'auto')",
                "model",
            )


OUTPUT_FORMAT = Literal["txt", "json", "srt", "vtt"]


class OutputSettings(_Section, frozen=True, kw_only=True):
    """What is written to the outbox for each transcript."""

    formats: Annotated[
        list[OUTPUT_FORMAT],
        _doc("""Files written per transcript, at least one: `txt` (the text), `json` (the
        transcript object as the backend returned it), `srt` and `vtt` (captions)."""),
    ] = field(default_factory=lambda: ["txt", "json"])

    def __post_init__(self) -> None:
        if not self.formats:
            raise _invalid("formats", "needs at least one format")
        force_setattr(self, "formats", list(dict.fromkeys(self.formats)))


_OFF = ("off", "false", "none")
DEFAULT_LISTEN = "127.0.0.1:8765"


class HttpSettings(_Section, frozen=True, kw_only=True):
    """The HTTP endpoint: health (`/healthz`, `/readyz`), Prometheus metrics (`/metrics`) and
    the webhook receiver (`/webhook`). It has no authentication: keep it on loopback or a
    private network."""

    listen: Annotated[
        str | None,
        _doc(f"""`HOST:PORT` to listen on; empty or `off` turns the endpoint off. Unset, the
        long-running daemon listens on `{DEFAULT_LISTEN}` and `run --once` listens nowhere,
        so a batch run from a timer never competes with the service for the port."""),
    ] = None

    def __post_init__(self) -> None:
        if self.listen is None:
            return
        value = self.listen.strip()
        if value and value.lower() not in _OFF:
            _host, sep, port = value.rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
                raise _invalid("listen", "must be HOST:PORT, or empty to turn the endpoint off")
        force_setattr(self, "listen", value)

    def address(self, *, once: bool = False) -> tuple[str, int] | None:
        """Where to listen, or None for no endpoint (``once``: a ``run --once`` batch)."""
        listen = self.listen
        if listen is None:
            listen = "" if once else DEFAULT_LISTEN
        if not listen or listen.lower() in _OFF:
            return None
        host, _, port = listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - only when the user asks


class DaemonSettings(_Section, frozen=True, kw_only=True):
    """The process itself: shutdown, de-duplication, logging, event loop and threads."""

    grace_s: Annotated[
        float,
        NonNegative,
        _doc("""On the first SIGTERM or SIGINT, uploads and submits under way get this long to
        reach a checkpoint; the journal resumes the rest on the next start."""),
    ] = 10.0
    dedupe: Annotated[
        bool,
        _doc("""With the AssemblyAI backend, the same bytes dropped again, under any name,
        reuse the earlier transcript instead of being uploaded and paid for again."""),
    ] = True
    accept_empty_journal: Annotated[
        bool,
        _doc("""Start although the journal holds no jobs while the output folders already hold
        results (a journal deleted or replaced by mistake would otherwise let every file be
        paid for again). Set it once, for the start that should accept it."""),
    ] = False
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], _doc("The least severe level logged.")
    ] = "info"
    log_format: Annotated[
        Literal["auto", "json", "console"],
        _doc("`auto`: readable lines on a terminal, JSON lines otherwise."),
    ] = "auto"
    event_loop: Annotated[
        Literal["auto", "asyncio", "uvloop"],
        _doc("""`auto`: uvloop when it is installed (it comes with the daemon on Linux and
        macOS), asyncio's own loop otherwise. `uvloop` when it is missing is an error."""),
    ] = "auto"
    io_threads: Annotated[
        int,
        Meta(ge=1, le=64),
        _doc("""Threads for blocking file work: hashing new files, inbox scans, reading audio
        headers and files for upload, writing transcripts, moving sources, folder fsyncs
        (the journal's fsync has a thread of its own). On a local disk more threads mostly
        contend with the event loop; raise it when the folders are on a slow network share
        or on different filesystems, where moving a source means copying it."""),
    ] = 3


class Settings(_Section, frozen=True, kw_only=True):
    """The folders and the backend. Relative paths are relative to the working directory."""

    inbox: Annotated[
        Path,
        _doc("""Folder watched, recursively, for audio. It must exist: the daemon never creates
        it, so an unmounted share is reported instead of watched."""),
    ] = Path("inbox")
    outbox: Annotated[
        Path,
        _doc("""Transcripts, as `<relative path without extension>.<format>`, in the inbox's
        subfolders. Created if missing, like the three below; none may be inside the
        inbox."""),
    ] = Path("outbox")
    done: Annotated[
        Path, _doc("Sources that were transcribed move here, keeping their relative path.")
    ] = Path("done")
    failed: Annotated[
        Path, _doc("Sources that failed move here, each with `<name>.error.json` beside it.")
    ] = Path("failed")
    state_dir: Annotated[
        Path,
        _doc("""The journal (`journal.sqlite3`) and a lock file: one daemon per state_dir.
        Keep it with the folders, or a restart cannot resume."""),
    ] = Path("state")
    backend: Annotated[
        Literal["auto", "assemblyai", "local"],
        _doc("`auto`: AssemblyAI when an API key is configured, the local engine otherwise."),
    ] = "auto"
    watch: WatchSettings = field(default_factory=WatchSettings)
    assemblyai: AssemblyAISettings = field(default_factory=AssemblyAISettings)
    transcription: Annotated[
        dict[str, Any],
        _doc("""Request fields sent unchanged with every `POST /v2/transcript` (`language_code`,
        `speaker_labels`, `keyterms_prompt`, ...), so a new API option needs no code change.
        `speech_models` is always sent (default below); `audio_url` is the daemon's
        own."""),
    ] = field(default_factory=lambda: {"speech_models": list(DEFAULT_SPEECH_MODELS)})
    output: OutputSettings = field(default_factory=OutputSettings)
    local: LocalSettings = field(default_factory=LocalSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)

    def __post_init__(self) -> None:
        if "audio_url" in self.transcription:
            raise _invalid("transcription.audio_url", "is set by the daemon for each file")
        force_setattr(
            self,
            "transcription",
            {"speech_models": list(DEFAULT_SPEECH_MODELS), **self.transcription},
        )
        # Lexically only ("a/../b" is "b"): the folders may not exist yet. The check that
        # resolves symlinks runs at start-up, in transcribed.folders.
        inbox = Path(os.path.normpath(self.inbox.expanduser().absolute()))
        for name in ("outbox", "done", "failed", "state_dir"):
            other = Path(os.path.normpath(Path(getattr(self, name)).expanduser().absolute()))
            if other == inbox or inbox in other.parents:
                raise _invalid(name, f"{other} must not be inside the inbox ({inbox})", "inbox")
        if self.assemblyai.webhook_url and self.http.address() is None:
            raise _invalid(
                "assemblyai.webhook_url",
                "needs http.listen: the webhook receiver is served there",
                "http.listen",
            )

    def resolved_backend(self) -> Literal["assemblyai", "local"]:
        """``auto`` means AssemblyAI when a key is configured, otherwise the local engine."""
        if self.backend == "auto":
            return "assemblyai" if self.assemblyai.api_key is not None else "local"
        return self.backend


def _split_list(value: Any) -> Any:
    """Environment values arrive as text: accept a JSON list or a comma-separated one."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def _json_object(value: Any) -> Any:
    """A table of numbers and switches from text: a JSON object, or a table whose values came
    one by one from the environment (``..._VAD_PARAMETERS__THRESHOLD=0.6``)."""
    if isinstance(value, str):
        return json.loads(value)
    if isinstance(value, dict):
        return {key: _json_value(item) for key, item in value.items()}
    return value


def _json_value(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


_TRUE = frozenset({"true", "1", "yes", "on", "t", "y"})
_FALSE = frozenset({"false", "0", "no", "off", "f", "n"})


def _from_text(kind: type, value: Any) -> Any:
    """A switch or a number written as text (``off``, `` 2 ``, ``.5``, ``1_000``) as its type;
    anything else is left for the conversion to reject with its usual message."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if kind is bool:
        word = text.lower()
        return True if word in _TRUE else False if word in _FALSE else text
    try:
        return kind(text)
    except ValueError:
        pass
    if kind is int:  # "20.0", "1_000.0": a whole number written as a decimal
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() else text
    return text


def _scalar(kind: Any) -> type | None:
    """``bool``, ``int`` or ``float`` when a field holds one (maybe constrained or optional)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is Annotated:
        return _scalar(args[0])
    if origin in (typing.Union, types.UnionType):
        kinds = [arg for arg in args if arg is not type(None)]
        return _scalar(kinds[0]) if len(kinds) == 1 else None
    return kind if kind in (bool, int, float) else None


@functools.cache
def _scalar_fields() -> tuple[tuple[str, str, type], ...]:
    """``(section, key, bool | int | float)`` for every switch or number in the sections."""
    return tuple(
        (section.name, item.name, kind)
        for section in msgspec.structs.fields(Settings)
        if isinstance(section.type, type) and issubclass(section.type, Struct)
        for item in msgspec.structs.fields(section.type)
        if (kind := _scalar(item.type)) is not None
    )


@functools.cache
def _text_forms() -> dict[tuple[str, str], Callable[[Any], Any]]:
    """What to do with text, before the types are checked, for each ``(section, key)``: values
    from the environment or ``--set`` arrive as text."""
    forms: dict[tuple[str, str], Callable[[Any], Any]] = {
        ("watch", "patterns"): _split_list,
        ("output", "formats"): _split_list,
        ("daemon", "log_level"): _lower,
        ("daemon", "log_format"): _lower,
        ("daemon", "event_loop"): _lower,
        ("local", "vad_parameters"): _json_object,
    }
    for name, key, kind in _scalar_fields():
        forms[(name, key)] = functools.partial(_from_text, kind)
    return forms


def _decode(kind: type, value: Any) -> Any:
    """msgspec's hook for the two types it does not know: paths and the secret."""
    if kind is Path and isinstance(value, str | os.PathLike):
        return Path(value)
    if kind is Secret:
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return Secret(value)
    raise TypeError(f"Expected `str`, got `{type(value).__name__}`")


def _parse_env_value(path: tuple[str, ...], raw: str) -> Any:
    # [transcription] is passed to the API unchanged, so its values need their JSON types.
    if path and path[0] == "transcription":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


_MESSAGE = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]+)`$", re.S)


def _leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key)


def _record(
    origins: dict[tuple[str, ...], str], key_path: tuple[str, ...], value: Any, name: str
) -> None:
    """Note ``name`` as the source of ``key_path``, and of every key in ``value`` when it is a
    table: a table is merged key by key, so each key it sets must outrank the file's entry."""
    origins[key_path] = name
    if isinstance(value, Mapping):
        origins.update(dict.fromkeys(((*key_path, *leaf) for leaf in _leaves(value)), name))


def _origin(loc: tuple[str, ...], origins: dict[tuple[str, ...], str]) -> str | None:
    """Where the key was set, or the table holding it, or a key under it; None: a default."""
    sources = [origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins]
    sources += [name for path, name in origins.items() if loc and path[: len(loc)] == loc]
    return sources[0] if sources else None


def _source(
    loc: tuple[str, ...],
    origins: dict[tuple[str, ...], str],
    related: tuple[tuple[str, ...], ...] = (),
) -> str:
    """`` (from ...)`` for the key, then ``; other.key from ...`` for each key it was checked
    against that was set somewhere else (one may be the culprit: a default is never named)."""
    own = _origin(loc, origins)
    parts = [f"from {own}"] if own else []
    for other in related:
        where = _origin(other, origins)
        if where is not None and where != own:
            parts.append(f"{'.'.join(other)} from {where}")
    return f" ({'; '.join(parts)})" if parts else ""


def _describe(error: msgspec.ValidationError, origins: dict[tuple[str, ...], str]) -> str:
    """One line naming the key, from msgspec's ``<message> - at `$.section.key` ``."""
    text = str(error)
    match = _MESSAGE.match(text)
    message, path = (match["message"], match["path"] or "") if match else (text, "")
    loc = tuple(part for part in re.split(r"\.|(?=\[)", path) if part)
    related: tuple[tuple[str, ...], ...] = ()
    if unknown := _UNKNOWN.match(message):
        loc, message = (*loc, unknown["key"]), "unknown key"
    elif isinstance(check := error.__cause__, _CheckFailed):
        section = loc
        loc, message = (*section, *check.key.split(".")), check.message
        related = tuple((*section, *other.split(".")) for other in check.related)
    key = ".".join(loc).replace(".[", "[") or "(top level)"
    line = f"invalid configuration: {key}: {message}{_source(loc, origins, related)}"
    return line.replace("\n", "\\n")  # a key or value with a newline still makes one line


def _read_secret_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"invalid configuration: assemblyai.api_key_file: cannot read {path}: {exc.strerror}"
        ) from exc


def load_settings(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: defaults < TOML file < environment < ``overrides`` (command line).

    ``overrides`` maps dotted keys (``"assemblyai.base_url"``) to values.
    Raises ``ConfigError`` with one line that names the offending key.
    """
    environ = dict(environ or {})
    if path is None and environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    tree: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}

    if path is not None:
        try:
            with path.open("rb") as handle:
                tree = tomllib.load(handle)
            origins.update(dict.fromkeys(_leaves(tree), str(path)))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc

    env_tree: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key_path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if not all(key_path):
            raise ConfigError(f"invalid configuration: cannot read variable name {name}")
        value = _parse_env_value(key_path, raw)
        _set_path(env_tree, key_path, value)
        _record(origins, key_path, value, name)
    key_from_env = next((environ[name] for name in KEY_ENVS if environ.get(name)), None)
    key_env_name = next((name for name in KEY_ENVS if environ.get(name)), None)
    if key_from_env and "api_key" not in env_tree.get("assemblyai", {}):
        _set_path(env_tree, ("assemblyai", "api_key"), key_from_env)
        origins[("assemblyai", "api_key")] = str(key_env_name)
    tree = _merge(tree, env_tree)

    cli_tree: dict[str, Any] = {}
    for dotted, given in (overrides or {}).items():
        key_path = tuple(dotted.split("."))
        value = copy.deepcopy(given)  # the caller's tables stay as given
        _set_path(cli_tree, key_path, value)
        _record(origins, key_path, value, "command line")
    tree = _merge(tree, cli_tree)

    section = tree.get("assemblyai", {})
    if isinstance(section, dict) and not section.get("api_key"):
        section.pop("api_key", None)
        if section.get("api_key_file"):
            section["api_key"] = _read_secret_file(Path(section["api_key_file"]))
        elif credential := _credential_key(environ):
            section["api_key"] = credential
        tree["assemblyai"] = section

    for (name, key), before in _text_forms().items():
        table = tree.get(name)
        if isinstance(table, dict) and key in table:
            try:
                table[key] = before(table[key])
            except ValueError as exc:
                where = _source((name, key), origins)
                raise ConfigError(f"invalid configuration: {name}.{key}: {exc}{where}") from None

    try:
        settings = msgspec.convert(tree, Settings, strict=False, dec_hook=_decode)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(exc, origins)) from None
    for name, key, kind in _scalar_fields():
        value = getattr(getattr(settings, name), key)
        if kind is float and not math.isfinite(value):
            # Bounds let infinity through; no interval or rate here means "never".
            where = _source((name, key), origins)
            raise ConfigError(
                f"invalid configuration: {name}.{key}: must be a finite number{where}"
            )
    return settings


def _credential_key(environ: Mapping[str, str]) -> str | None:
    """The key from a systemd credential (``LoadCredential=assemblyai_api_key:...``)."""
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if not credentials:
        return None
    path = Path(credentials) / CREDENTIAL_NAME
    try:
        present = path.is_file()
    except OSError as exc:
        raise ConfigError(f"cannot read the credential {path}: {exc.strerror}") from exc
    return _read_secret_file(path) if present else None


def parse_set_option(text: str) -> tuple[str, Any]:
    """``--set assemblyai.base_url=http://...``: dotted key, value as TOML would read it."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set needs KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value
