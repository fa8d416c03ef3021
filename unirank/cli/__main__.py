"""`python -m unirank.cli` runs the `unirank` command."""

from unirank.cli import app

app()
