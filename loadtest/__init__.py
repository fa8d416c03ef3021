"""Load tests and benchmarks for the unirank service."""
