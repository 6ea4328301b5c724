"""Property tests for the mapping from inbox paths to outbox, done and failed names."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path, PurePosixPath

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import discover
from transcribed.journal import Journal
from transcribed.paths import NAME_MAX, numbered, output_base_candidates, report_path

SUFFIXES = (".txt", ".json", ".srt", ".vtt")
_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0")
_ascii = st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="/")
_stems = st.one_of(
    st.text(_chars, min_size=1, max_size=40),
    st.text(_chars, min_size=60, max_size=80),  # long, and up to 4 bytes a character
    st.text(_ascii, min_size=200, max_size=250),  # very long names
    st.sampled_from(["-rf", "--help", " spaced out ", "Ünïcödé 日本語", "a", "A", "..x", "x.."]),
).filter(lambda s: s not in (".", "..") and len(s.encode()) <= 250)
_exts = st.sampled_from([".mp3", ".MP3", ".wav", ".m4a", ".Flac", ".opus", ""])
_dirs = st.lists(
    st.text(_chars, min_size=1, max_size=20).filter(lambda s: s not in (".", "..")),
    max_size=6,
)


@st.composite
def rel_paths(draw: st.DrawFn) -> str:
    stem, ext = draw(_stems), draw(_exts)
    name = (stem + ext) if len((stem + ext).encode()) <= NAME_MAX else stem
    return PurePosixPath(*draw(_dirs), name).as_posix()


def _inside(root: Path, rel: str) -> bool:
    target = (root / rel).resolve()
    return root.resolve() in target.parents


@given(rel_paths())
def test_output_names_stay_inside_their_folder_and_fit(rel: str) -> None:
    root = Path("/srv/outbox")
    parent = PurePosixPath(rel).parent
    for base in itertools.islice(output_base_candidates(rel), 5):
        assert PurePosixPath(base).parent == parent
        for suffix in SUFFIXES:
            name = PurePosixPath(base + suffix).name
            assert len(name.encode()) <= NAME_MAX
            assert _inside(root, base + suffix)


@given(rel_paths(), st.integers(min_value=2, max_value=999))
def test_numbered_and_report_names_stay_in_place_and_fit(rel: str, n: int) -> None:
    moved = numbered(rel, n)
    assert PurePosixPath(moved).parent == PurePosixPath(rel).parent
    assert len(PurePosixPath(moved).name.encode()) <= NAME_MAX
    assert moved != rel
    assert numbered(rel, n) != numbered(rel, n + 1)
    report = report_path(moved)
    assert report.endswith(".error.json")
    assert len(PurePosixPath(report).name.encode()) <= NAME_MAX
    assert _inside(Path("/srv/failed"), report)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rel_paths(), min_size=2, max_size=12, unique=True))
def test_reserved_output_names_never_collide_even_ignoring_case(rels: list[str]) -> None:
    # Same stems with other extensions and case variants are the interesting collisions.
    extra = [r.rsplit(".", 1)[0] + ".wav" for r in rels[:3]] + [r.upper() for r in rels[:3]]
    sources = list(dict.fromkeys(rels + extra))
    with tempfile.TemporaryDirectory() as tmp, Journal(Path(tmp)) as journal:
        outbox = Path(tmp) / "outbox"
        bases = []
        for rel in sources:
            job = discover(journal, rel, 1, 1)
            assert job is not None
            base = journal.reserve_output_base(job, output_base_candidates(rel), lambda _b: False)
            bases.append(base)
        assert len({b.casefold() for b in bases}) == len(sources)
        for base in bases:  # each is a usable file name on a real file system
            path = outbox / f"{base}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
        assert sum(1 for p in outbox.rglob("*.json") if p.is_file()) == len(sources)
