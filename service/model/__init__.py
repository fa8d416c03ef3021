"""What a loaded bundle can do: read its manifest and tables, build a request's unified context, retrieve
candidates, encode features, score them through onnxruntime (micro-batched), add entities at run time.
May import `service.core`, `service.ops` and `unirank.core`; knows nothing of Redis or of HTTP.
"""
