"""Redis and what the service keeps in it: the client (pool, auto-pipelining, circuit breaker), the
keystroke cache, live events and history, the impression log, the control document, an embedded server
for the demo. May import `service.core` and `service.ops`; knows nothing of ranking or of the model.
"""
