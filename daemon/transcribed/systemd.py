"""systemd's notify protocol (``sd_notify``) over ``$NOTIFY_SOCKET``, with no dependency.

``Type=notify`` units learn from ``READY=1`` that start-up has finished, from ``STATUS=`` what to
show in ``systemctl status``, and from ``STOPPING=1`` that shutdown has begun. With
``WatchdogSec=`` set, systemd passes ``$WATCHDOG_USEC`` and expects ``WATCHDOG=1`` at least that
often; :meth:`Notifier.keepalive` sends it from the event loop every half interval, so a blocked
loop misses its pings and gets the service restarted.

Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing. A message that cannot be sent
is logged once and dropped: notification must never take the daemon down.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

from transcribed.logs import get_logger, redact

log = get_logger("transcribed.systemd")

#: Longest gap between ``STATUS=`` refreshes when no watchdog asks for more frequent pings.
STATUS_INTERVAL_S = 5.0


def _address(raw: str) -> str | bytes | None:
    """A socket address from ``$NOTIFY_SOCKET``: a path, or ``@name`` in the abstract namespace."""
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # vsock and other families are not used for services


def watchdog_interval_s(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """How often to send ``WATCHDOG=1`` (half of ``$WATCHDOG_USEC``), or None for never.

    ``$WATCHDOG_PID``, when set, names the process the watchdog is meant for; a child that
    inherited the environment must stay quiet.
    """
    raw_usec = environ.get("WATCHDOG_USEC", "")
    if not raw_usec.isdigit() or int(raw_usec) == 0:
        return None
    raw_pid = environ.get("WATCHDOG_PID", "")
    if raw_pid and raw_pid != str(os.getpid() if pid is None else pid):
        return None
    return int(raw_usec) / 1e6 / 2


class Notifier:
    """Sends notify messages to the service manager; a no-op without ``$NOTIFY_SOCKET``."""

    def __init__(self, notify_socket: str | None = None, watchdog_s: float | None = None) -> None:
        self._address = _address(notify_socket) if notify_socket else None
        self.watchdog_s = watchdog_s if self._address is not None else None
        self._warned = False
        self._status = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET") or None, watchdog_interval_s(environ))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; returns whether it was sent."""
        if self._address is None:
            return False
        message = "\n".join(field.replace("\n", " ") for field in fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("notify_failed", error=str(exc))
            return False
        return True

    def status(self, text: str) -> None:
        """``STATUS=`` for ``systemctl status``; unchanged text is not sent again."""
        text = redact(text)
        if text != self._status:
            self._status = text
            self.notify(f"STATUS={text}")

    def ready(self, status: str) -> None:
        self._status = redact(status)
        self.notify("READY=1", f"STATUS={self._status}")

    def stopping(self, status: str) -> None:
        self._status = redact(status)
        self.notify("STOPPING=1", f"STATUS={self._status}")

    async def keepalive(
        self,
        status: Callable[[], str] | None = None,
        healthy: Callable[[], bool] | None = None,
    ) -> None:
        """Until cancelled: ``WATCHDOG=1`` every half watchdog interval while ``healthy()``
        (every part of the daemon alive), and fresh ``STATUS=``."""
        if self._address is None:
            return
        tick_s = min(self.watchdog_s or STATUS_INTERVAL_S, STATUS_INTERVAL_S)
        while True:
            if self.watchdog_s is not None and (healthy is None or healthy()):
                self.notify("WATCHDOG=1")
            if status is not None:
                self.status(status())
            await asyncio.sleep(tick_s)
