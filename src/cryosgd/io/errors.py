"""The error raised for bad input files.

An :class:`InputError` is the user's problem, not a bug: the command line
prints it as ``cryosgd: error: <file>: <problem>`` and exits with status 2,
without a traceback.
"""
from __future__ import annotations

import os

__all__ = ["InputError"]


class InputError(Exception):
    """A bad or missing input file.

    path:    the file at fault (``str`` or ``Path``).
    problem: what is wrong with it, in a few words.
    ``str(error)`` is the single line ``<path>: <problem>``.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{self.path}: {self.problem}")
