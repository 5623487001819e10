"""The base of every expected failure.

An expected failure is bad input or a missing prerequisite: a misspelt config
key, a missing checkpoint, a dataset without cached embeddings. Its message
names the input at fault, what was expected and what to do, so the ``graft``
command prints it as one line (``graft COMMAND: error: ...``, exit 2) with no
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GraftError(Exception):
    """An expected failure; the message says which input is at fault and what to do."""
