"""How much of a log stream Redis keeps: the entries younger than a retention, and about so many bytes.

Contract: `StreamBound(retention_s, max_bytes)`. `minid()` is the stream id below which entries are older
than the retention: appends trim to it exactly (the age an operator states is the age kept; stream ids
are Redis' millisecond clock, the bound is this process's clock). `maxlen()` is how many entries fit in
`max_bytes` at the average entry size this process has written so far (`observe(nbytes)` once per entry,
plus `ENTRY_OVERHEAD` for Redis' own bookkeeping), trimmed approximately (whole stream nodes, as Redis
recommends: the bound holds to within one node's worth of entries). Whichever bound is tighter wins.
"""

from __future__ import annotations

import time

ENTRY_OVERHEAD = 64  # bytes Redis spends per stream entry beyond its field values (id, field name, listpack)


class StreamBound:
    def __init__(self, retention_s: float, max_bytes: int):
        self.retention_s = retention_s
        self.max_bytes = max_bytes
        self._bytes, self._entries = 0, 0

    def observe(self, nbytes: int) -> None:
        self._bytes += nbytes
        self._entries += 1

    @property
    def entry_bytes(self) -> float:
        return (self._bytes / self._entries if self._entries else 0.0) + ENTRY_OVERHEAD

    def minid(self, now_s: float | None = None) -> str:
        now_s = time.time() if now_s is None else now_s
        return str(max(int((now_s - self.retention_s) * 1000), 0))

    def maxlen(self) -> int:
        return max(int(self.max_bytes // self.entry_bytes), 1)
