"""Process-level plumbing: Prometheus metrics, the garbage collector's tuning, draining a worker.
Imports nothing of the service.
"""
