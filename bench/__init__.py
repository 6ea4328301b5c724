"""Benchmarks of the daemon against the fake AssemblyAI server and the local engine.

Run them all with ``python -m bench`` (``make bench``); see ``bench/__main__.py``.
"""
