"""Configuration: precedence, environment overrides, key sources, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from transcribed.cli import cli
from transcribed.config import (
    DEFAULT_SPEECH_MODELS,
    AssemblyAISettings,
    Settings,
    WatchSettings,
    load_settings,
    parse_set_option,
)
from transcribed.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "config" / "transcribed.toml"


def test_example_config_loads_and_documents_every_key() -> None:
    settings = load_settings(EXAMPLE, {})
    assert settings == Settings()
    text = EXAMPLE.read_text()
    for top in msgspec.structs.fields(Settings):
        name, section = top.name, top.type
        if isinstance(section, type) and issubclass(section, msgspec.Struct):
            assert f"[{name}]" in text
            for key in msgspec.structs.fields(section):
                assert re.search(rf"^#? ?{key.name} = ", text, re.M), (
                    f"{name}.{key.name} undocumented"
                )
        else:
            assert re.search(rf"^(\[{name}\]|#? ?{name} = )", text, re.M), name


def test_precedence_is_cli_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text(
        'inbox = "from-file"\noutbox = "file-out"\n[assemblyai]\nmax_concurrent_jobs = 7\n'
    )
    env = {"TRANSCRIBED_INBOX": "from-env", "TRANSCRIBED_ASSEMBLYAI__MAX_CONCURRENT_JOBS": "9"}
    settings = load_settings(config, env, {"inbox": "from-cli"})
    assert settings.inbox == Path("from-cli")
    assert settings.outbox == Path("file-out")
    assert settings.assemblyai.max_concurrent_jobs == 9
    assert settings.done == Path("done")


def test_config_path_comes_from_the_environment_too(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text('backend = "local"\n')
    assert load_settings(None, {"TRANSCRIBED_CONFIG": str(config)}).backend == "local"


def test_api_key_sources_and_precedence(tmp_path: Path) -> None:
    assert load_settings(None, {"ASSEMBLYAI_KEY": "old-name"}).assemblyai.api_key is not None
    settings = load_settings(None, {"ASSEMBLYAI_KEY": "old-name", "ASSEMBLYAI_API_KEY": "new-name"})
    assert settings.assemblyai.api_key is not None
    assert settings.assemblyai.api_key.get_secret_value() == "new-name"
    key_file = tmp_path / "key"
    key_file.write_text("from-file-key\n")
    settings = load_settings(None, {"TRANSCRIBED_ASSEMBLYAI__API_KEY_FILE": str(key_file)})
    assert settings.assemblyai.api_key is not None
    assert settings.assemblyai.api_key.get_secret_value() == "from-file-key"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "assemblyai_api_key").write_text("credential-key")
    settings = load_settings(None, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert settings.assemblyai.api_key is not None
    assert settings.assemblyai.api_key.get_secret_value() == "credential-key"


def test_auto_backend_follows_the_key() -> None:
    assert load_settings(None, {}).resolved_backend() == "local"
    assert load_settings(None, {"ASSEMBLYAI_API_KEY": "k" * 32}).resolved_backend() == "assemblyai"
    assert load_settings(None, {"ASSEMBLYAI_API_KEY": ""}).resolved_backend() == "local"


def test_secrets_never_reach_repr_or_dumps() -> None:
    settings = load_settings(None, {"ASSEMBLYAI_API_KEY": "super-secret-key-123"})
    assert "super-secret-key-123" not in repr(settings)
    assert "super-secret-key-123" not in str(settings.assemblyai.api_key)
    dumped = msgspec.json.encode(settings, enc_hook=str)
    assert b"super-secret-key-123" not in dumped
    assert b'"api_key":"**********"' in dumped


def test_transcription_fields_pass_through_with_json_types_and_default_models() -> None:
    settings = load_settings(
        None,
        {
            "TRANSCRIBED_TRANSCRIPTION__SPEAKER_LABELS": "true",
            "TRANSCRIBED_TRANSCRIPTION__SPEAKERS_EXPECTED": "3",
            "TRANSCRIBED_TRANSCRIPTION__LANGUAGE_CODE": "de",
            "TRANSCRIBED_TRANSCRIPTION__KEYTERMS_PROMPT": '["Kubernetes", "gRPC"]',
        },
    )
    assert settings.transcription == {
        "speech_models": DEFAULT_SPEECH_MODELS,
        "speaker_labels": True,
        "speakers_expected": 3,
        "language_code": "de",
        "keyterms_prompt": ["Kubernetes", "gRPC"],
    }


def test_lists_from_the_environment_accept_commas_or_json() -> None:
    assert load_settings(None, {"TRANSCRIBED_OUTPUT__FORMATS": "txt, srt"}).output.formats == [
        "txt",
        "srt",
    ]
    env = {"TRANSCRIBED_WATCH__PATTERNS": '["*.mp3"]'}
    assert load_settings(None, env).watch.patterns == ["*.mp3"]


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"TRANSCRIBED_ASSEMBLYAI__MAX_CONCURRENT_JOBS": "0"}, "assemblyai.max_concurrent_jobs"),
        ({"TRANSCRIBED_WATCH__SETTLE_S": "soon"}, "watch.settle_s"),
        ({"TRANSCRIBED_BACKEND": "cloud"}, "backend"),
        ({"TRANSCRIBED_OUTPUT__FORMATS": "txt,docx"}, "output.formats"),
        ({"TRANSCRIBED_INBOXX": "x"}, "inboxx: unknown key"),
        ({"TRANSCRIBED_ASSEMBLYAI__BASE_URL": "api.assemblyai.com"}, "assemblyai.base_url"),
        ({"TRANSCRIBED_OUTBOX": "inbox/out"}, "must not be inside the inbox"),
        ({"TRANSCRIBED_TRANSCRIPTION__AUDIO_URL": "x"}, "audio_url"),
        ({"TRANSCRIBED_OUTPUT__FORMATS": "[txt"}, "output.formats"),
        ({"TRANSCRIBED_ASSEMBLYAI__POLL_MAX_S": "0.5"}, "assemblyai.poll_max_s"),
        ({"TRANSCRIBED_DAEMON__DEDUPE": "maybe"}, "daemon.dedupe"),
        ({"TRANSCRIBED_DAEMON__IO_THREADS": "0"}, "daemon.io_threads"),
        (
            {
                "TRANSCRIBED_ASSEMBLYAI__WEBHOOK_URL": "http://x/h",
                "TRANSCRIBED_HTTP__LISTEN": "off",
            },
            "assemblyai.webhook_url: needs http.listen",
        ),
    ],
)
def test_invalid_values_give_one_line_naming_the_key(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, env)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_errors_name_where_the_value_came_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"assemblyai\.foo: unknown key \(from TRANSCRIBED_"):
        load_settings(None, {"TRANSCRIBED_ASSEMBLYAI__FOO__BAR": "1"})
    with pytest.raises(ConfigError, match=r"watch\.settle_s: .* \(from command line\)$"):
        load_settings(None, {}, {"watch.settle_s": "soon"})
    config = tmp_path / "t.toml"
    config.write_text("[http]\nlisten = 8080\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, {})
    assert str(info.value) == (
        f"invalid configuration: http.listen: Expected `str | null`, got `int` (from {config})"
    )
    config.write_text('[watch]\nsettle_s = 3\n[output]\nformats = ["txt"]\n')
    with pytest.raises(ConfigError, match=r"output\.formats: .* \(from command line\)$"):
        load_settings(config, {}, {"output": {"formats": "[txt"}})
    with pytest.raises(ConfigError, match=r"watch\.settle_s: .* \(from command line\)$"):
        load_settings(config, {}, dict([parse_set_option("watch={settle_s=-1}")]))
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"TRANSCRIBED_WATCH__A\nB": "1"})
    assert str(info.value) == (
        "invalid configuration: watch.a\\nb: unknown key (from TRANSCRIBED_WATCH__A\\nB)"
    )


def test_a_check_between_two_keys_names_where_each_was_set(tmp_path: Path) -> None:
    config = tmp_path / "t.toml"
    config.write_text(
        "inbox = '/srv/in'\n[assemblyai]\npoll_min_s = 5\nwebhook_url = 'http://x/h'\n"
    )
    cases = [
        (
            {"TRANSCRIBED_ASSEMBLYAI__POLL_MAX_S": "2"},
            {},
            "assemblyai.poll_max_s: must be at least poll_min_s (5) "
            f"(from TRANSCRIBED_ASSEMBLYAI__POLL_MAX_S; assemblyai.poll_min_s from {config})",
        ),
        (
            {"TRANSCRIBED_OUTBOX": "/srv/in/out"},
            {},
            "outbox: /srv/in/out must not be inside the inbox (/srv/in) "
            f"(from TRANSCRIBED_OUTBOX; inbox from {config})",
        ),
        (
            {},
            {"http": {"listen": "off"}},
            "assemblyai.webhook_url: needs http.listen: the webhook receiver is served there "
            f"(from {config}; http.listen from command line)",
        ),
        (  # the key checked is a default: only the other one was set, and is the one to fix
            {},
            {"assemblyai.poll_min_s": 30},
            "assemblyai.poll_max_s: must be at least poll_min_s (30) "
            "(assemblyai.poll_min_s from command line)",
        ),
        (  # two variables
            {"TRANSCRIBED_ASSEMBLYAI__POLL_MAX_S": "2", "TRANSCRIBED_ASSEMBLYAI__POLL_MIN_S": "3"},
            {},
            "assemblyai.poll_max_s: must be at least poll_min_s (3) "
            "(from TRANSCRIBED_ASSEMBLYAI__POLL_MAX_S; "
            "assemblyai.poll_min_s from TRANSCRIBED_ASSEMBLYAI__POLL_MIN_S)",
        ),
    ]
    for env, overrides, expected in cases:
        with pytest.raises(ConfigError) as info:
            load_settings(config, env, overrides)
        assert str(info.value) == f"invalid configuration: {expected}"
    with pytest.raises(ConfigError) as info:  # both from one place: named once
        load_settings(config, {}, {"assemblyai.poll_max_s": 1, "assemblyai.poll_min_s": 2})
    assert str(info.value).endswith("(2) (from command line)")


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("Yes", True), ("on", True), ("1", True), ("off", False), ("NO", False)],
)
def test_switches_from_text(text: str, value: bool) -> None:
    assert load_settings(None, {"TRANSCRIBED_DAEMON__DEDUPE": text}).daemon.dedupe is value
    assert load_settings(None, {}, {"watch.force_polling": text}).watch.force_polling is value


def test_numbers_from_text() -> None:
    env = {
        "TRANSCRIBED_WATCH__SETTLE_S": " 2 ",
        "TRANSCRIBED_WATCH__RESCAN_INTERVAL_S": ".5",
        "TRANSCRIBED_WATCH__POLL_DELAY_MS": "1_000",
        "TRANSCRIBED_ASSEMBLYAI__MAX_CONCURRENT_JOBS": " 1_000.0 ",
        "TRANSCRIBED_ASSEMBLYAI__CHARS_PER_CAPTION": " 32 ",
    }
    settings = load_settings(None, env)
    assert (settings.watch.settle_s, settings.watch.rescan_interval_s) == (2.0, 0.5)
    assert settings.watch.poll_delay_ms == 1000
    assert settings.assemblyai.max_concurrent_jobs == 1000
    assert settings.assemblyai.chars_per_caption == 32
    for bad in ("yes", "true", "20.5", "nan"):
        with pytest.raises(ConfigError, match=r"assemblyai\.max_concurrent_jobs"):
            load_settings(None, {"TRANSCRIBED_ASSEMBLYAI__MAX_CONCURRENT_JOBS": bad})
    for bad in ("nan", "inf", "1e400"):
        with pytest.raises(ConfigError, match=r"watch\.settle_s"):
            load_settings(None, {"TRANSCRIBED_WATCH__SETTLE_S": bad})
    with pytest.raises(ConfigError, match=r"requests_per_s: must be a finite number \(from "):
        load_settings(None, {}, {"assemblyai.requests_per_s": float("inf")})


def test_overrides_take_paths_and_stay_as_given(tmp_path: Path) -> None:
    overrides: dict[str, Any] = {"inbox": tmp_path / "in", "output": {"formats": "txt,srt"}}
    settings = load_settings(None, {}, overrides)
    assert settings.inbox == tmp_path / "in"
    assert settings.output.formats == ["txt", "srt"]
    assert overrides["output"] == {"formats": "txt,srt"}


def test_sections_take_keywords_only() -> None:
    with pytest.raises(TypeError):
        WatchSettings(["*.mp3"])  # type: ignore[misc]


def test_a_key_given_in_code_as_text_is_still_hidden() -> None:
    settings = AssemblyAISettings(api_key="k-secret")  # type: ignore[arg-type]
    assert "k-secret" not in repr(settings)
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "k-secret"


def test_text_values_are_read_as_their_types() -> None:
    env = {
        "TRANSCRIBED_WATCH__FORCE_POLLING": "true",
        "TRANSCRIBED_DAEMON__LOG_LEVEL": "DEBUG",
        "TRANSCRIBED_ASSEMBLYAI__BASE_URL": "http://127.0.0.1:9/",
        "TRANSCRIBED_ASSEMBLYAI__REQUESTS_PER_S": "12.5",
        "TRANSCRIBED_OUTPUT__FORMATS": "srt,txt,srt",
    }
    settings = load_settings(None, env)
    assert settings.watch.force_polling is True
    assert settings.daemon.log_level == "debug"
    assert settings.assemblyai.base_url == "http://127.0.0.1:9"
    assert settings.assemblyai.requests_per_s == 12.5
    assert settings.output.formats == ["srt", "txt"]


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("inbox = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_settings(config, {})


def test_cli_exits_2_on_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["status", "--set", "watch.settle_s=-1"], environ={}) == 2
    err = capsys.readouterr().err
    assert "watch.settle_s" in err
    assert err.count("\n") == 1
