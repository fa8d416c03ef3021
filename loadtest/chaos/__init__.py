"""`unirank chaos`: the fault suite — each case a real fault against a live service and a real Redis,
bounded in time, reported as a table of what held (JSON + markdown in results/chaos-<timestamp>.*).

Cases:
1. schemathesis over every operation of the OpenAPI document (bounded examples): responses 5xx;
2. hostile bodies (invalid UTF-8, 10 MB, nesting 10,000 deep, 100k candidates, k = 10^9, a 1 MB id, NUL
   and emoji in ids): every answer a 4xx (emoji ids are valid: 200), server RSS growth;
3. Redis SIGKILLed under /rank and /events load and restarted (AOF, appendfsync always): failed /rank,
   events acknowledged (202) but missing afterwards, seconds until /events is acknowledged again;
   and Redis hung (SIGSTOP): /rank latency healthy, hung (the circuit breaker open) and after SIGCONT;
4. an overload at 10x the measured capacity (open loop): share rejected (503), p99 of the admitted, p99
   of /healthz meanwhile; and the same overload with a steady stream of click batches alongside: every
   batch acknowledged, every click in the exported log;
5. SIGTERM under load: requests the server accepted and dropped without an answer;
6. a worker SIGKILLed under load (two workers): failed requests, and whether a worker comes back;
7. the bundle directory corrupted, then removed, under a running service: answers keep coming, the same.
`--quick` shortens each case (what CI runs); the full run is what docs/resilience.md's table reports.
"""

from loadtest.chaos.suite import CASES, format_table, run_chaos

__all__ = ["CASES", "format_table", "run_chaos"]
