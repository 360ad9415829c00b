"""The ``medsam-server`` command line, thin over the layers below it.

``main`` (the parser, ``segment``, ``checkpoints``, ``make-test-checkpoint``, ``serve``'s
options), ``batch`` (``evaluate`` and ``batch``), ``options`` (the options ``segment``,
``batch`` and ``serve`` share) and ``remote`` (``segment --server URL``).
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
