"""Limits, timeouts and identity of one running service."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MB = 1 << 20
# a replica's name starts its session ids ("r1.<token>"): a proxy routes on it, so it must
# be a plain token (see examples/nginx)
REPLICA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


@dataclass(frozen=True)
class ServiceConfig:
    token: str
    model_name: str = "MedSAM2"
    checkpoint_sha256: str = ""
    # idle: no work for this long closes a session (never one at work); lease: a session
    # whose client asked for a lease is closed when the client is silent this long, jobs
    # and all (a crashed client frees its memory within the lease)
    idle_timeout_s: float = 1800.0
    lease_timeout_s: float = 60.0
    replica: str = ""  # this server's name behind a proxy; "" = none
    warm_start_s: float | None = None  # what the start-up forward pass took (None: skipped)
    undo_depth: int = 16  # prompts per object that undo can take back
    memory_budget_bytes: int = 4096 * MB
    max_upload_bytes: int = 1024 * MB
    # JSON bodies (prompts with a mask) never need much; a lower cap bounds parse memory
    max_json_bytes: int = 64 * MB
    max_wait_s: float = 30.0  # longest long poll on GET /jobs/{id}
    job_keep_s: float = 600.0  # finished jobs stay readable this long
    max_sessions: int = 64
    max_objects: int = 64  # per session: each holds a mask volume and low-res logits

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("the service needs a non-empty bearer token")
        for name in ("idle_timeout_s", "lease_timeout_s", "max_wait_s", "job_keep_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        for name in ("memory_budget_bytes", "max_upload_bytes", "max_json_bytes", "max_sessions",
                     "max_objects"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.undo_depth < 0:
            raise ValueError(f"undo_depth must be >= 0, got {self.undo_depth}")
        if self.replica and not REPLICA_NAME.match(self.replica):
            raise ValueError(f"replica name {self.replica!r} must be 1 to 32 letters, digits, "
                             "'_' or '-' (it starts the session ids a proxy routes on)")

    @property
    def json_limit_bytes(self) -> int:
        return min(self.max_json_bytes, self.max_upload_bytes)

    @property
    def sweep_interval_s(self) -> float:
        # often enough that a short idle or lease timeout is honoured within ~25 %
        return min(max(min(self.idle_timeout_s, self.lease_timeout_s) / 4.0, 0.1), 10.0)

    def limits(self) -> dict[str, int]:
        """The limits a client may want to know (``/info``), all integers."""
        return {
            "max_upload_bytes": self.max_upload_bytes,
            "max_json_bytes": self.json_limit_bytes,
            "memory_budget_bytes": self.memory_budget_bytes,
            "idle_timeout_s": math.ceil(self.idle_timeout_s),
            # a heartbeat every third of it keeps a session (floor: a short test lease)
            "lease_timeout_s": max(1, math.floor(self.lease_timeout_s)),
            "undo_depth": self.undo_depth,
            "max_wait_s": math.floor(self.max_wait_s),
            "job_keep_s": math.ceil(self.job_keep_s),
            "max_sessions": self.max_sessions,
            "max_objects": self.max_objects,
        }
