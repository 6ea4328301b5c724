"""A fake AssemblyAI v2 API server over real HTTP, for tests and benchmarks."""

from fakeapi.content import (
    BYTES_PER_SECOND,
    audio_duration_for,
    audio_ms_of,
    describe_file_type,
    fake_text_for,
    looks_like_audio,
)
from fakeapi.counters import DROPPED, FakeCounters
from fakeapi.fake_api import FakeAssemblyAI, FakeConfig
from fakeapi.faults import FAULT_KINDS, FaultConfig
from fakeapi.handlers import (
    ROUTE_DELETE,
    ROUTE_LIST,
    ROUTE_PARAGRAPHS,
    ROUTE_POLL,
    ROUTE_SENTENCES,
    ROUTE_SRT,
    ROUTE_SUBMIT,
    ROUTE_UPLOAD,
    ROUTE_VTT,
)
from fakeapi.records import CDN_UPLOAD_PREFIX, TranscriptRecord, UploadRecord

__all__ = [
    "BYTES_PER_SECOND",
    "CDN_UPLOAD_PREFIX",
    "DROPPED",
    "FAULT_KINDS",
    "ROUTE_DELETE",
    "ROUTE_LIST",
    "ROUTE_PARAGRAPHS",
    "ROUTE_POLL",
    "ROUTE_SENTENCES",
    "ROUTE_SRT",
    "ROUTE_SUBMIT",
    "ROUTE_UPLOAD",
    "ROUTE_VTT",
    "FakeAssemblyAI",
    "FakeConfig",
    "FakeCounters",
    "FaultConfig",
    "TranscriptRecord",
    "UploadRecord",
    "audio_duration_for",
    "audio_ms_of",
    "describe_file_type",
    "fake_text_for",
    "looks_like_audio",
]
