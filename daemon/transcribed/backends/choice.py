"""Which backend a configuration asks for, built: the one place that names the engines."""

from __future__ import annotations

from transcribed.backends import Backend
from transcribed.config import Settings
from transcribed.errors import ConfigError
from transcribed.logs import get_logger
from transcribed.metrics import Metrics

log = get_logger("transcribed.backends")


def make_backend(
    settings: Settings, metrics: Metrics, webhook_secret: str | None = None
) -> Backend:
    choice = settings.resolved_backend()
    reason = (
        "configured"
        if settings.backend != "auto"
        else ("an API key is configured" if choice == "assemblyai" else "no API key is configured")
    )
    log.info("backend_selected", backend=choice, reason=reason)
    if choice == "assemblyai":
        from transcribed.backends.assemblyai import AssemblyAIBackend

        if settings.assemblyai.api_key is None:
            raise ConfigError(
                "backend is assemblyai but no API key is set "
                "(ASSEMBLYAI_API_KEY, or [assemblyai] api_key / api_key_file)"
            )
        return AssemblyAIBackend(
            settings.assemblyai,
            settings.transcription,
            settings.output.formats,
            metrics,
            webhook_secret=webhook_secret,
        )
    from transcribed.backends.local import LocalBackend
    from transcribed.models import cache_dir

    return LocalBackend(
        settings.local, settings.output.formats, models_dir=cache_dir(settings), metrics=metrics
    )
