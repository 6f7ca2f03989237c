"""What depthcut has to say, through the standard ``logging`` module: a library call prints
nothing (the loggers carry a ``NullHandler``), the CLI shows it.

* ``status`` — one-line progress and notes ("depthcut: wrote …"): logger ``depthcut``, shown
  on stderr by the CLI.
* ``result`` — what a job produced for a person to read (a plan summary, a before / after
  table): logger ``depthcut.output``, shown on stdout by the CLI.

In Python, ``logging.basicConfig(level=logging.INFO)`` (or a handler on ``depthcut``) shows both.
"""

from __future__ import annotations

import logging
import sys

LOG = logging.getLogger("depthcut")
OUTPUT = logging.getLogger("depthcut.output")
LOG.addHandler(logging.NullHandler())


def status(message: str) -> None:
    """A one-line note on the run's progress (stderr in the CLI)."""
    LOG.info(message)


def result(text: str) -> None:
    """A result for a person to read (stdout in the CLI)."""
    OUTPUT.info(text)


class _Stream(logging.Handler):
    """Writes to ``sys.stdout`` / ``sys.stderr`` as they are at each record (so that a
    redirected or captured stream receives it)."""

    def __init__(self, stdout: bool):
        super().__init__(logging.INFO)
        self.stdout = stdout

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage(), file=sys.stdout if self.stdout else sys.stderr, flush=True)


def show_in_terminal() -> None:
    """The CLI's handlers (once): status lines to stderr, results to stdout."""
    if any(isinstance(h, _Stream) for h in LOG.handlers):
        return
    LOG.setLevel(logging.INFO)
    LOG.addHandler(_Stream(stdout=False))
    OUTPUT.propagate = False
    OUTPUT.setLevel(logging.INFO)
    OUTPUT.addHandler(_Stream(stdout=True))
