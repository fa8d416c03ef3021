"""The unirank ranking service: FastAPI + Redis + onnxruntime. It never imports torch."""
