"""transcribed: a batch transcription daemon.

Audio dropped into an inbox becomes transcripts in an outbox, through the AssemblyAI v2 API
or an embedded faster-whisper engine. Every job's state lives in a SQLite journal, so the
daemon resumes after any crash without uploading or paying twice.
"""

__version__ = "0.1.0"
