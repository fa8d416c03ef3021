"""unirank: one learned model for search and recommendations, served at keystroke latency."""

__version__ = "0.1.0"
