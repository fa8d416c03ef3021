"""The service's shared vocabulary: settings, the error kinds, request bodies, the answer of a ranking, the
routing document. May import `service.ops` (metrics) and `unirank.core`; nothing else of the service.
"""
