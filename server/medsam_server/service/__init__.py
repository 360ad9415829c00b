"""The HTTP inference service: many clients share one model (and one GPU) over HTTP.

Modules, one job each: ``config`` (limits and timeouts), ``errors`` (what can go wrong,
in protocol terms), ``sessions`` (volumes, idle and lease expiry, memory budget),
``claims`` (who holds a session: its work items and its one job), ``worker`` (the one
thread that runs the model), ``jobs`` (propagation jobs and their updates), ``operations``
(what each route does, without HTTP), ``app`` (FastAPI: translation only) and ``run``
(``medsam-server serve``: load, warm start, serve).
"""
