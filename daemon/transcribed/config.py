"""Configuration: defaults < TOML file < environment < command line, validated once.

``load_settings`` is the only place that reads ``os.environ``. Every key can be overridden as
``TRANSCRIBED_<KEY>`` with nested tables joined by ``__``; the API key also comes from
``ASSEMBLYAI_API_KEY`` (or the older ``ASSEMBLYAI_KEY``), from ``[assemblyai] api_key_file``, or
from a systemd credential named ``assemblyai_api_key``.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

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


def _split_list(value: Any) -> Any:
    """Environment values arrive as text: accept a JSON list or a comma-separated one."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WatchSettings(_Section):
    patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_PATTERNS))
    settle_s: float = Field(2.0, ge=0)
    rescan_interval_s: float = Field(30.0, gt=0)
    force_polling: bool = False
    poll_delay_ms: int = Field(1000, ge=50)

    _patterns = field_validator("patterns", mode="before")(_split_list)


class AssemblyAISettings(_Section):
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    base_url: str = "https://api.assemblyai.com"
    max_concurrent_jobs: int = Field(200, ge=1, le=10_000)
    max_concurrent_uploads: int = Field(4, ge=1, le=64)
    requests_per_s: float = Field(40.0, gt=0)
    request_burst: int = Field(1000, ge=1)
    poll_min_s: float = Field(1.0, gt=0)
    poll_max_s: float = Field(20.0, gt=0)
    retry_max_backoff_s: float = Field(60.0, gt=0)
    connect_timeout_s: float = Field(15.0, gt=0)
    read_timeout_s: float = Field(60.0, gt=0)
    chars_per_caption: int | None = Field(None, ge=1)
    stuck_after_s: float = Field(3 * 3600.0, gt=0)
    resubmit_stuck: bool = False
    webhook_url: str | None = None

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _poll_order(self) -> AssemblyAISettings:
        if self.poll_max_s < self.poll_min_s:
            raise ValueError("poll_max_s must be at least poll_min_s")
        return self


class LocalSettings(_Section):
    model: str = "tiny.en"
    compute_type: str = "int8"
    beam_size: int = Field(5, ge=1, le=20)
    language: str | None = "en"
    workers: int = Field(2, ge=1, le=64)
    threads_per_worker: int = Field(1, ge=1, le=64)
    timeout_factor: float = Field(4.0, gt=0)
    min_timeout_s: float = Field(120.0, gt=0)


class OutputSettings(_Section):
    formats: list[Literal["txt", "json", "srt", "vtt"]] = Field(default=["txt", "json"])

    _formats = field_validator("formats", mode="before")(_split_list)

    @field_validator("formats")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one format")
        return list(dict.fromkeys(value))


class HttpSettings(_Section):
    listen: str = "127.0.0.1:8765"

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        value = value.strip()
        if value and value.lower() not in ("off", "false", "none"):
            _host, sep, port = value.rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ValueError("must be HOST:PORT, or empty to turn the endpoint off")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.listen) and self.listen.lower() not in ("off", "false", "none")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - only when the user asks


class DaemonSettings(_Section):
    grace_s: float = Field(10.0, ge=0)
    dedupe: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"

    @field_validator("log_level", "log_format", "event_loop", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class Settings(_Section):
    inbox: Path = Path("inbox")
    outbox: Path = Path("outbox")
    done: Path = Path("done")
    failed: Path = Path("failed")
    state_dir: Path = Path("state")
    backend: Literal["auto", "assemblyai", "local"] = "auto"
    watch: WatchSettings = Field(default_factory=WatchSettings)
    assemblyai: AssemblyAISettings = Field(default_factory=AssemblyAISettings)
    transcription: dict[str, Any] = Field(
        default_factory=lambda: {"speech_models": list(DEFAULT_SPEECH_MODELS)}
    )
    output: OutputSettings = Field(default_factory=OutputSettings)
    local: LocalSettings = Field(default_factory=LocalSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)

    @field_validator("transcription")
    @classmethod
    def _speech_models(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "audio_url" in value:
            raise ValueError("audio_url is set by the daemon for each file")
        return {"speech_models": list(DEFAULT_SPEECH_MODELS), **value}

    @model_validator(mode="after")
    def _folders_apart(self) -> Settings:
        inbox = self.inbox.expanduser().absolute()
        for name in ("outbox", "done", "failed", "state_dir"):
            other = Path(getattr(self, name)).expanduser().absolute()
            if other == inbox or inbox in other.parents:
                raise ValueError(f"{name} ({other}) must not be inside the inbox ({inbox})")
        return self

    @model_validator(mode="after")
    def _webhooks_need_a_receiver(self) -> Settings:
        if self.assemblyai.webhook_url and not self.http.enabled:
            raise ValueError(
                "assemblyai.webhook_url needs http.listen: the webhook receiver is served there"
            )
        return self

    def resolved_backend(self) -> Literal["assemblyai", "local"]:
        """``auto`` means AssemblyAI when a key is configured, otherwise the local engine."""
        if self.backend == "auto":
            return "assemblyai" if self.assemblyai.api_key is not None else "local"
        return self.backend


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


def _describe(error: ValidationError, origins: dict[tuple[str, ...], str]) -> str:
    first = error.errors()[0]
    loc = tuple(str(part) for part in first["loc"] if not str(part).startswith("function-"))
    key = ".".join(loc) or "(top level)"
    origin = ""
    for length in range(len(loc), 0, -1):
        if loc[:length] in origins:
            origin = f" (from {origins[loc[:length]]})"
            break
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    return f"invalid configuration: {key}: {message}{origin}"


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
        _set_path(env_tree, key_path, _parse_env_value(key_path, raw))
        origins[key_path] = name
    key_from_env = next((environ[name] for name in KEY_ENVS if environ.get(name)), None)
    key_env_name = next((name for name in KEY_ENVS if environ.get(name)), None)
    if key_from_env and "api_key" not in env_tree.get("assemblyai", {}):
        _set_path(env_tree, ("assemblyai", "api_key"), key_from_env)
        origins[("assemblyai", "api_key")] = str(key_env_name)
    tree = _merge(tree, env_tree)

    cli_tree: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        key_path = tuple(dotted.split("."))
        _set_path(cli_tree, key_path, value)
        origins[key_path] = "command line"
    tree = _merge(tree, cli_tree)

    section = tree.get("assemblyai", {})
    if isinstance(section, dict) and not section.get("api_key"):
        section.pop("api_key", None)
        if section.get("api_key_file"):
            section["api_key"] = _read_secret_file(Path(section["api_key_file"]))
        elif credential := _credential_key(environ):
            section["api_key"] = credential
        tree["assemblyai"] = section

    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins)) from None


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
