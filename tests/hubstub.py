"""A stand-in for the Hugging Face hub: one model repository served over real HTTP.

It answers the few requests ``huggingface_hub.snapshot_download`` makes (repository info, the
file tree, then ``HEAD`` and ``GET`` of each file under ``/<repo>/resolve/<commit>/``), so the
daemon's real fetch code runs against it through ``HF_ENDPOINT``. The files are the bundled
``tiny.en`` model's, served under another name: what arrives in the cache must then load.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStub:
    """``repo`` serving the files in ``source``; ``requests`` lists what was asked for."""

    def __init__(self, repo: str, source: Path) -> None:
        self.repo = repo
        self.files = {path.name: path for path in sorted(source.iterdir()) if path.is_file()}
        self.requests: list[str] = []
        self.url = ""

    def _answer(self, handler: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlparse(handler.path).path)
        self.requests.append(f"{handler.command} {path}")
        resolve = f"/{self.repo}/resolve/"
        if path.startswith(resolve):
            _revision, _, name = path[len(resolve) :].partition("/")
            if name not in self.files:
                self._send(handler, 404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                return
            data = self.files[name].read_bytes()
            headers = {
                "X-Repo-Commit": COMMIT,
                "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                "Content-Type": "application/octet-stream",
            }
            self._send(handler, 200, data, headers, head)
        elif path.startswith(f"/api/models/{self.repo}/revision/"):
            siblings = [{"rfilename": name} for name in self.files]
            info = {"id": self.repo, "sha": COMMIT, "siblings": siblings}
            self._json(handler, info, head)
        elif path.startswith(f"/api/models/{self.repo}/tree/"):
            tree = [
                {
                    "type": "file",
                    "path": name,
                    "size": file.stat().st_size,
                    "oid": hashlib.sha1(file.read_bytes()).hexdigest(),
                }
                for name, file in self.files.items()
            ]
            self._json(handler, tree, head)
        else:
            self._send(handler, 404, b"", {"X-Error-Code": "RepoNotFound"}, head)

    def _json(self, handler: BaseHTTPRequestHandler, value: object, head: bool) -> None:
        body = json.dumps(value).encode()
        self._send(handler, 200, body, {"Content-Type": "application/json"}, head)

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: dict[str, str],
        head: bool,
    ) -> None:
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not head:
            handler.wfile.write(body)

    @contextmanager
    def serve(self) -> Iterator[HubStub]:
        """Listen on a free port of 127.0.0.1 until the block ends."""
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub._answer(self, head=False)

            def do_HEAD(self) -> None:
                stub._answer(self, head=True)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join()

    def fetched(self, name: str) -> bool:
        return f"GET /{self.repo}/resolve/{COMMIT}/{name}" in self.requests
