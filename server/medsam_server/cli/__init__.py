"""The ``medsam-server`` command line, thin over the layers below it.

``main`` (the parser, ``segment``, ``checkpoints``, ``make-test-checkpoint``, ``serve``'s
options and ``main()``, the console script's entry point), ``batch`` (``evaluate`` and
``batch``), ``options`` (the options ``segment``, ``batch`` and ``serve`` share) and
``remote`` (``segment --server URL``). Nothing is re-exported here, so
``medsam_server.cli.main`` is always the module.
"""
