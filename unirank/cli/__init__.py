"""The `unirank` command: one CLI for every job (data, training, serving, benchmarks).

Each job's heavy imports (torch, the service) happen inside its command, so `unirank serve` never
loads torch. A bad argument is one error line naming it (and the valid values), exit code 2.
"""

from unirank.cli import benchmarks, data, loop, models, serving, state, training  # noqa: F401 (they register their commands)
from unirank.cli.app import app

__all__ = ["app"]
