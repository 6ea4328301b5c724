"""One upload link shared by every upload the fake receives, like a service's ingress seen
from a client's single uplink.

Each upload, after reading a chunk, reserves the link for that chunk's time at the configured
rate, after every reservation made before it, and sleeps until its slot ends. Concurrent
uploads therefore take turns chunk by chunk: they share the rate fairly, and together never
exceed it. An idle link banks no credit. Reading slower makes TCP slow the client down.
"""

from __future__ import annotations

import asyncio


class SharedUplink:
    """Paces the reading of upload bodies to a total rate shared by all of them."""

    def __init__(self) -> None:
        self._free_at = 0.0

    async def take(self, nbytes: int, rate_bps: float | None) -> None:
        """Wait for ``nbytes`` worth of the link at ``rate_bps`` (None or 0: unlimited)."""
        if not rate_bps:
            return
        now = asyncio.get_running_loop().time()
        self._free_at = max(now, self._free_at) + nbytes / rate_bps
        await asyncio.sleep(self._free_at - now)
