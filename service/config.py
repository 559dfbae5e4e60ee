"""Service settings, all from environment variables so containers configure them without code.

| variable | default | meaning |
|---|---|---|
| SEQSERVE_MODELS | (every seqserve model) | comma-separated names or name:version tags to serve |
| SEQSERVE_DEVICE | auto | auto, cpu, cuda or cuda:N (auto = CUDA when present) |
| SEQSERVE_WORKERS | 1 | server worker processes, each holding every model |
| SEQSERVE_TORCH_THREADS | 1 | torch intra-op threads per worker |
| SEQSERVE_MAX_BATCH_SIZE | 64 | most instances merged into one forward pass |
| SEQSERVE_MAX_WAIT_MS | 0 | extra wait for more instances when a batch is not full |
| SEQSERVE_MAX_INSTANCES | 256 | most instances in one request |
| SEQSERVE_MAX_LENGTH | 4096 | most steps in one sequence or history |
| SEQSERVE_ACCESS_LOG | 0 | 1 logs a line per request |

Why one torch thread per worker: on a 2-core machine torch's default (one thread per core) makes a
batch-1 server fall to about 1 request/s as soon as the other core is busy, because the intra-op
threads spin waiting for each other; with one thread the event loop, JSON parsing and the forward pass
share the cores without fighting. Scale out with workers (one per core) instead of threads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


class SettingError(ValueError):
    """A ``SEQSERVE_*`` variable with a value the service cannot use; says which and why."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name} {problem}")
        self.name, self.problem = name, problem


def _int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingError(name, f"must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingError(name, f"must be at least {minimum}, got {value}")
    return value


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise SettingError(name, f"must be a number, got {raw!r}") from None
    if value < 0:
        raise SettingError(name, f"must not be negative, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment, read once at start-up."""

    models: tuple[str, ...]  # empty: every seqserve model in the store
    device: str
    workers: int
    torch_threads: int
    max_batch_size: int
    max_wait_ms: float
    max_instances: int
    max_length: int
    access_log: bool

    @classmethod
    def from_env(cls) -> "Settings":
        models = tuple(m.strip() for m in os.environ.get("SEQSERVE_MODELS", "").split(",") if m.strip())
        return cls(
            models=models,
            device=os.environ.get("SEQSERVE_DEVICE", "auto"),
            workers=_int("SEQSERVE_WORKERS", 1),
            torch_threads=_int("SEQSERVE_TORCH_THREADS", 1),
            max_batch_size=_int("SEQSERVE_MAX_BATCH_SIZE", 64),
            max_wait_ms=_float("SEQSERVE_MAX_WAIT_MS", 0.0),
            max_instances=_int("SEQSERVE_MAX_INSTANCES", 256),
            max_length=_int("SEQSERVE_MAX_LENGTH", 4096),
            access_log=os.environ.get("SEQSERVE_ACCESS_LOG", "0").strip().lower() in ("1", "true", "yes"),
        )
