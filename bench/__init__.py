"""Benchmarks of the daemon against the fake AssemblyAI server and the local engine.

Run them all with ``python -m bench`` (``make bench``); see ``bench/__main__.py``.
"""

import sys
from pathlib import Path

# The fake AssemblyAI server is test support, not part of the installed package: it lives in
# tests/fakeapi, and the benchmarks drive it from there.
_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
