"""The HTTP endpoint under hostile clients: idle and half-sent connections, floods, bad input.

The in-process tests run ``HttpServer`` alone with short limits and attack it over real sockets.
The daemon tests run the real CLI as a subprocess and attack its endpoint while files flow,
reading the daemon's own event-loop lag histograms from ``/metrics`` before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import resource
import signal
from collections.abc import AsyncIterator, Awaitable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from conftest import (
    Daemon,
    Folders,
    daemon_command,
    eventually,
    expected_text,
    make_audio,
    write_config,
)
from fakeapi import FakeAssemblyAI
from test_http import sample
from transcribed import webhooks
from transcribed.backends.assemblyai import WEBHOOK_HEADER
from transcribed.connections import GuardLimits
from transcribed.http import HttpServer
from transcribed.metrics import Metrics

SECRET = "hook-secret-0123456789"
TEN_MB = 10 * 1024 * 1024

# -- small clients --------------------------------------------------------------------------


def _ready() -> Mapping[str, str]:
    return {"journal": "ok"}


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rpartition(":")
    return host, int(port)


async def raw_exchange(url: str, data: bytes, timeout_s: float = 20) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes or answers in full."""
    host, port = _host_port(url)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            head = await reader.readuntil(b"\r\n\r\n")
            return head
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def post_head(path: str, headers: Mapping[str, bytes | str], length: int | None) -> bytes:
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: test"]
    if length is not None:
        lines.append(f"Content-Length: {length}".encode())
    for name, value in headers.items():
        lines.append(
            name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
        )
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def closed_by_server(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """True once the server has closed the connection (EOF or reset) within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def no_tracebacks(records: list[logging.LogRecord]) -> list[str]:
    """Log records that carry an exception or are errors (what a 500 would leave behind)."""
    return [r.getMessage() for r in records if r.exc_info or r.levelno >= logging.ERROR]


@contextlib.asynccontextmanager
async def serving(
    limits: GuardLimits | None = None, routes: list[web.RouteDef] | None = None
) -> AsyncIterator[tuple[HttpServer, Metrics]]:
    metrics = Metrics()
    server = HttpServer("127.0.0.1", 0, metrics, _ready, routes=routes or [], limits=limits)
    async with server:
        yield server, metrics


def closed(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "transcribed_http_connections_closed_total", {"reason": reason}
    )
    assert value is not None
    return value


def buckets(text: str, name: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts, by upper bound."""
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == f"{name}_bucket":
                out[float(s.labels["le"])] = float(s.value)
    assert out, f"no histogram {name}"
    return out


def worst_bucket(before: dict[float, float], after: dict[float, float]) -> float:
    """The upper bound of the highest bucket that gained samples between two scrapes."""
    gained = {le: after[le] - before.get(le, 0.0) for le in after}
    worst = 0.0
    previous = 0.0
    for le in sorted(gained):
        if gained[le] > previous:
            worst = le
        previous = gained[le]
    return worst


def over(before: dict[float, float], after: dict[float, float], limit_s: float) -> float:
    """How many samples between two scrapes were above ``limit_s`` (a bucket bound)."""
    total = after[float("inf")] - before[float("inf")]
    return total - (after[limit_s] - before[limit_s])


# -- the webhook receiver, in process ------------------------------------------------------


def _receiver(notified: list[tuple[str, str]]) -> list[web.RouteDef]:
    return webhooks.webhook_routes(
        WEBHOOK_HEADER,
        SECRET,
        lambda transcript_id: transcript_id == "ours",
        lambda transcript_id, status: notified.append((transcript_id, status)),
    )


async def test_bad_webhook_input_is_a_4xx_and_leaves_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    notified: list[tuple[str, str]] = []
    with capture_logs() as logs:
        await _attack_the_receiver(notified)
    assert notified == [("ours", "completed")]
    assert no_tracebacks(caplog.records) == []
    # About thirty refusals, one log line: a client cannot fill the log.
    assert len([e for e in logs if e["event"] == "webhook_refused"]) == 1


async def _attack_the_receiver(notified: list[tuple[str, str]]) -> None:
    async with serving(routes=_receiver(notified)) as (server, _metrics):
        url = server.url
        hook = f"{url}/webhook"
        good = {WEBHOOK_HEADER: SECRET}

        # The secret: missing, wrong, and bytes that are not UTF-8 (D18).
        assert status_of(await raw_exchange(url, post_head("/webhook", {}, 0))) == 401
        wrong = post_head("/webhook", {WEBHOOK_HEADER: "nope"}, 0)
        assert status_of(await raw_exchange(url, wrong)) == 401
        for value in (b"\xff\xfe\x80", b"caf\xc3\xa9", b"\xc3(" + SECRET.encode()):
            head = post_head("/webhook", {WEBHOOK_HEADER: value}, 0)
            assert status_of(await raw_exchange(url, head)) == 401, value

        # Requests aiohttp cannot parse: 400, and one debug line rather than a traceback.
        malformed = [
            b"\x00\xff\x16\x03\x01 not http\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n",
            b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
            b"POST /webhook HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
            b"POST /webhook HTTP/1.1\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n",
        ]
        for data in malformed:
            assert status_of(await raw_exchange(url, data)) == 400, data[:40]

        # A 10 MB body is refused from its head alone: none of it is sent here.
        head = post_head("/webhook", {WEBHOOK_HEADER: "nope"}, TEN_MB)
        assert status_of(await raw_exchange(url, head)) == 401
        head = post_head("/webhook", good, TEN_MB)
        assert status_of(await raw_exchange(url, head)) == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(TEN_MB // 65536):
                yield b"[" * 65536

        async with aiohttp.ClientSession() as session:
            # Chunked, so no Content-Length: refused once past the cap.
            with contextlib.suppress(aiohttp.ClientOSError):
                async with session.post(hook, data=chunks(), headers=good) as answer:
                    assert answer.status == 413
            bad_bodies = [
                b"{",
                b"not json",
                b"\xff\xfe{}",
                b"[]",
                b'"transcript_id"',
                b'{"transcript_id": "ours"}',
                b'{"transcript_id": ["ours"], "status": "completed"}',
                b'{"transcript_id": "ours", "status": 7}',
                b"[" * 60_000,
                b"[" * 30_000 + b"]" * 30_000,
                b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
            ]
            for body in bad_bodies:
                async with session.post(hook, data=body, headers=good) as answer:
                    assert answer.status == 400, body[:40]
            unknown = {"transcript_id": "theirs", "status": "completed"}
            async with session.post(hook, json=unknown, headers=good) as answer:
                assert answer.status == 404
            ours = {"transcript_id": "ours", "status": "completed"}
            async with session.post(hook, json=ours, headers=good) as answer:
                assert answer.status == 200
            async with session.get(f"{url}/healthz") as answer:
                assert answer.status == 200


async def test_a_webhook_body_sent_one_byte_at_a_time_is_cut_off_with_408(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhooks, "BODY_TIMEOUT_S", 1.0)
    body = json.dumps({"transcript_id": "ours", "status": "completed"}).encode()
    async with serving(routes=_receiver([])) as (server, _metrics):
        host, port = _host_port(server.url)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(post_head("/webhook", {WEBHOOK_HEADER: SECRET}, len(body)))

            async def trickle() -> None:
                for byte in body:
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.2)

            sender = asyncio.create_task(trickle())
            try:
                async with asyncio.timeout(20):
                    head = await reader.readuntil(b"\r\n\r\n")
            finally:
                sender.cancel()
            assert status_of(head) == 408
            assert not sender.done() or sender.cancelled()
        finally:
            writer.close()


# -- connections: timeouts and the cap, in process -----------------------------------------


async def test_idle_half_sent_slow_and_kept_alive_connections_are_closed() -> None:
    limits = GuardLimits(header_timeout_s=0.5, keepalive_timeout_s=0.5)
    async with serving(limits) as (server, metrics):
        host, port = _host_port(server.url)
        streams = [await asyncio.open_connection(host, port) for _ in range(4)]
        (idle_r, _), (half_r, half_w), (slow_r, slow_w), (kept_r, kept_w) = streams
        half_w.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        kept_w.write(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        assert status_of(await kept_r.readuntil(b"\r\n\r\n")) == 200

        async def one_byte_at_a_time() -> None:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: test\r\n" * 100:
                slow_w.write(bytes([byte]))
                await slow_w.drain()
                await asyncio.sleep(0.05)

        slow = asyncio.create_task(one_byte_at_a_time())
        try:
            for reader in (idle_r, half_r, slow_r, kept_r):
                assert await closed_by_server(reader, 20)
        finally:
            slow.cancel()
            await asyncio.gather(slow, return_exceptions=True)
            for _, writer in streams:
                writer.close()
        assert closed(metrics, "timeout") == 4
        await eventually(lambda: server.open_connections == 0, 10, "no connection left")


async def test_at_the_cap_the_longest_idle_connection_makes_room_for_a_new_client() -> None:
    cap = 8
    limits = GuardLimits(max_connections=cap, header_timeout_s=60, evict_idle_s=0.2)
    async with serving(limits) as (server, metrics):
        host, port = _host_port(server.url)
        held = []
        for _ in range(3 * cap):
            held.append(await asyncio.open_connection(host, port))
            assert server.open_connections <= cap
        async with aiohttp.ClientSession() as session, session.get(f"{server.url}/healthz") as r:
            assert r.status == 200
        assert server.open_connections <= cap
        # The oldest were closed to make room for the later ones and for the request.
        assert await closed_by_server(held[0][0], 10)
        assert closed(metrics, "evicted") >= 2 * cap
        for _, writer in held:
            writer.close()


async def test_at_the_cap_with_every_connection_busy_a_new_client_waits_its_turn() -> None:
    cap = 4
    release = asyncio.Event()
    entered = 0

    async def slow(_request: web.Request) -> web.Response:
        nonlocal entered
        entered += 1
        await release.wait()
        return web.Response(text="done")

    limits = GuardLimits(max_connections=cap, evict_idle_s=0.0)
    async with (
        serving(limits, [web.get("/slow", slow)]) as (server, _metrics),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
    ):

        async def fetch(path: str) -> int:
            async with session.get(f"{server.url}{path}") as answer:
                await answer.read()
                return answer.status

        busy = [asyncio.create_task(fetch("/slow")) for _ in range(cap)]
        await eventually(lambda: entered == cap, 10, "every connection busy")
        waiting = asyncio.create_task(fetch("/healthz"))
        done, _ = await asyncio.wait([waiting], timeout=0.5)
        assert not done, "a busy connection was closed to make room"
        assert server.open_connections == cap
        release.set()
        assert await asyncio.wait_for(waiting, 10) == 200
        assert await asyncio.gather(*busy) == [200] * cap


async def test_the_loop_probe_sees_a_blocked_loop() -> None:
    """The instrument the daemon tests rely on: a 400 ms block shows up as such."""
    import time

    async with serving() as (_server, metrics):
        before = buckets(metrics.render().decode(), "transcribed_event_loop_blocked_seconds")
        await asyncio.sleep(0.1)  # let the probe take a sample first
        with capture_logs() as logs:
            time.sleep(0.4)  # a deliberate block of the event loop
            await asyncio.sleep(0.1)
        after = buckets(metrics.render().decode(), "transcribed_event_loop_blocked_seconds")
    assert over(before, after, 0.1) == 1
    assert worst_bucket(before, after) == 0.5
    assert [e["event"] for e in logs] == ["event_loop_blocked"]


# -- the daemon, as a subprocess -----------------------------------------------------------


class LimitedDaemon(Daemon):
    """A daemon started with a low descriptor limit (``nofile``), as a small container has."""

    def __init__(self, config: Path, log_path: Path, nofile: int) -> None:
        super().__init__(config, log_path)
        self.nofile = nofile

    async def start(self, *extra: str) -> Daemon:
        nofile = self.nofile

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *daemon_command(self.config, *extra),
            env=self.env,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=limit,
        )
        return self

    async def http_url(self) -> str:
        await self.wait_for_event("http_started")
        return str(next(e["url"] for e in self.events() if e.get("event") == "http_started"))

    def client_sockets(self, port: int) -> int:
        """Descriptors the daemon holds for connections to its own ``port`` (not the listener)."""
        on_port: set[str] = set()
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(FileNotFoundError):
                for line in Path(f"/proc/{self.proc.pid}/net/{table}").read_text().splitlines()[1:]:
                    fields = line.split()
                    local_port = int(fields[1].rpartition(":")[2], 16)
                    if local_port == port and fields[3] != "0A":  # 0A: listening
                        on_port.add(fields[9])
        count = 0
        for fd in Path(f"/proc/{self.proc.pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                count += os.readlink(fd).removeprefix("socket:[").rstrip("]") in on_port
        return count

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
            self.close()


def _bad_lines(daemon: Daemon) -> list[dict[str, Any]]:
    """Log lines that a crash, a 500 or a traceback would leave."""
    bad_events = {"job_crashed", "component_failed", "fatal_error"}
    return [
        e
        for e in daemon.events()
        if e.get("level") in ("error", "critical")
        or "exception" in e
        or e.get("event") in bad_events
        or "Error handling request" in str(e.get("event"))
    ]


async def _hold_connections(url: str, count: int) -> list[asyncio.StreamWriter]:
    """Open ``count`` connections, idle or with half a request head sent, and keep them."""
    host, port = _host_port(url)
    writers = []
    for i in range(count):
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            continue  # the listen backlog is full: the kernel refuses, the daemon is unaffected
        if i % 2:
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        writers.append(writer)
    return writers


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
async def test_d9_held_connections_cannot_exhaust_descriptors_while_files_flow(
    folders: Folders, fake: FakeAssemblyAI, event_loop: str
) -> None:
    """D9: 300 idle and half-sent connections against a daemon allowed 100 descriptors."""
    config = write_config(
        folders, fake, **{"http.listen": "127.0.0.1:0", "daemon.event_loop": event_loop}
    )
    daemon = LimitedDaemon(config, folders.root / "daemon.log", nofile=100)
    held: list[asyncio.StreamWriter] = []
    try:
        await daemon.start()
        url = await daemon.http_url()
        await daemon.wait_for_event("watcher_started")
        held = await _hold_connections(url, 200)
        shas = [make_audio(folders.inbox / f"f{i}.mp3", seed=f"d9-{i}") for i in range(12)]
        # More clients keep arriving while the files flow.
        held += await _hold_connections(url, 100)
        await eventually(
            lambda: len(list(folders.outbox.glob("*.txt"))) == len(shas), 60, "transcripts"
        )
        for i, sha in enumerate(shas):
            assert (folders.outbox / f"f{i}.txt").read_text() == expected_text(sha) + "\n"
        assert not folders.failed.exists() or not any(folders.failed.iterdir())
        # Half the descriptors at most (not the default 64), plus the one waiting for room.
        started = next(e for e in daemon.events() if e["event"] == "http_started")
        assert started["max_connections"] == 50
        assert daemon.client_sockets(_host_port(url)[1]) <= 50 + 1
        async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as r:
            assert r.status == 200
            text = await r.text()
        assert sample(text, "transcribed_http_connections_closed_total", reason="evicted") > 0
        assert _bad_lines(daemon) == []
        for writer in held:
            writer.close()
        held = []
        assert await daemon.signal(signal.SIGTERM) == 0
    finally:
        for writer in held:
            writer.close()
        await daemon.stop()


async def test_fuzzing_the_webhook_and_metrics_neither_stops_nor_blocks_the_daemon(
    folders: Folders, fake: FakeAssemblyAI, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.hold_jobs()
    config = write_config(
        folders,
        fake,
        **{
            "http.listen": "127.0.0.1:0",
            # Nobody listens there: the fake's notifications are lost, polling finishes the job.
            "assemblyai.webhook_url": "http://127.0.0.1:9/webhook",
            "assemblyai.poll_max_s": 1.0,
        },
    )
    daemon = LimitedDaemon(config, folders.root / "daemon.log", nofile=1024)
    try:
        await daemon.start()
        url = await daemon.http_url()
        await daemon.wait_for_event("watcher_started")
        sha = make_audio(folders.inbox / "a.mp3", seed="fuzz")
        await fake.wait_until(lambda: fake.counters.submits == 1, 30)
        record = next(iter(fake.transcripts.values()))
        secret = record.params["webhook_auth_header_value"]
        hook = f"{url}/webhook"
        good = {WEBHOOK_HEADER: secret}

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def scrape() -> str:
                async with session.get(f"{url}/metrics") as answer:
                    assert answer.status == 200
                    return await answer.text()

            async def post(body: bytes, headers: Mapping[str, str], to: str = hook) -> int:
                try:
                    data = io.BytesIO(body)  # aiohttp warns about a large bytes body
                    async with session.post(to, data=data, headers=headers) as answer:
                        return answer.status
                except aiohttp.ClientOSError:
                    return 0  # closed while we still sent: only for refused large bodies

            before = await scrape()
            one_byte_per_second = asyncio.create_task(_trickle(url, good))
            slow_head = asyncio.create_task(_slow_head(url))
            cases: list[Awaitable[Any]] = [
                post(b"{}", {}),
                post(b"{}", {WEBHOOK_HEADER: "wrong"}),
                raw_exchange(url, post_head("/webhook", {WEBHOOK_HEADER: b"\xff\xfe"}, 0)),
                post(b"x" * TEN_MB, {WEBHOOK_HEADER: "wrong"}),
                post(b"x" * TEN_MB, good),
                post(b"{" * 1000, good),
                post(b"[" * 60_000, good),
                post(b"\xff not json", good),
                post(b"[" * 30_000 + b"]" * 30_000, good),
                raw_exchange(url, b"\x00\xff\x16\x03\x01 garbage\r\n\r\n"),
                raw_exchange(url, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 100_000),
                post(b"x" * TEN_MB, {}, to=f"{url}/metrics"),
            ]
            fuzz = [asyncio.ensure_future(case) for case in cases]
            metrics_flood = [asyncio.create_task(scrape()) for _ in range(200)]
            results = await asyncio.gather(*fuzz)
            assert results[:2] == [401, 401]
            assert status_of(results[2]) == 401
            assert results[3] in (401, 0)
            assert results[4] in (413, 0)
            assert results[5:9] == [400, 400, 400, 400]
            assert [status_of(head) for head in results[9:11]] == [400, 400]
            assert results[11] in (405, 0)
            assert all(await asyncio.gather(*metrics_flood))
            assert status_of(await one_byte_per_second) == 408
            assert await slow_head, "a request head sent one byte per second was not cut off"
            # The attack is over: its lag is between these two scrapes (the job is still held).
            after = await scrape()

            # The receiver still takes a real notification, and the job finishes.
            fake.release_jobs()
            await fake.wait_for_status(record.id, "completed", timeout_s=30)
            notice = {"transcript_id": record.id, "status": "completed"}
            async with session.post(hook, json=notice, headers=good) as answer:
                assert answer.status == 200
            await eventually(lambda: (folders.outbox / "a.txt").exists(), 30, "transcript")
            assert (folders.outbox / "a.txt").read_text() == expected_text(sha) + "\n"

        lag = worst_bucket(
            *(buckets(t, "transcribed_event_loop_lag_seconds") for t in (before, after))
        )
        blocked_before, blocked_after = (
            buckets(t, "transcribed_event_loop_blocked_seconds") for t in (before, after)
        )
        blocked = worst_bucket(blocked_before, blocked_after)
        with capsys.disabled():
            print(
                f"\nevent-loop lag during the fuzz: worst wall-clock lag <= {lag * 1000:g} ms, "
                f"worst of it the loop's own work <= {blocked * 1000:g} ms"
            )
        # A sample may fall short of a stall by the probe's interval (50 ms): no sample over
        # 50 ms means no stall over 100 ms.
        assert over(blocked_before, blocked_after, 0.05) == 0
        assert _bad_lines(daemon) == []
        assert await daemon.signal(signal.SIGTERM) == 0
    finally:
        fake.release_jobs()
        await daemon.stop()


async def _trickle(url: str, headers: Mapping[str, str]) -> bytes:
    """A webhook whose body arrives one byte per second: the answer the daemon gives it."""
    host, port = _host_port(url)
    body = json.dumps({"transcript_id": "x", "status": "completed"}).encode()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(post_head("/webhook", headers, len(body)))

        async def send() -> None:
            for byte in body:
                writer.write(bytes([byte]))
                await asyncio.sleep(1.0)

        sender = asyncio.create_task(send())
        try:
            async with asyncio.timeout(60):
                return await reader.readuntil(b"\r\n\r\n")
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    finally:
        writer.close()


async def _slow_head(url: str) -> bool:
    """A request head sent one byte per second: True once the daemon closes the connection."""
    host, port = _host_port(url)
    reader, writer = await asyncio.open_connection(host, port)

    async def send() -> None:
        for byte in b"GET /metrics HTTP/1.1\r\nHost: test\r\n" + b"X-Slow: x\r\n" * 100:
            writer.write(bytes([byte]))
            await asyncio.sleep(1.0)

    sender = asyncio.create_task(send())
    try:
        # The daemon's header timeout is 10 s; allow a busy machine three times that.
        return await closed_by_server(reader, 30)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.close()
