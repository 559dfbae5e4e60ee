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
| SEQSERVE_MAX_BODY_MB | 1 | largest request body in MiB (413 past it) |
| SEQSERVE_MAX_BINARY_BODY_MB | 4 | largest Open Inference Protocol body with binary tensors (its JSON part stays within SEQSERVE_MAX_BODY_MB) |
| SEQSERVE_MAX_QUEUE_MS | 100 | estimated wait in a worker (or a model's queue) past which new requests get 503 |
| SEQSERVE_REQUEST_TIMEOUT_S | 10 | deadline: a request not answered by then gets 503 |
| SEQSERVE_HEADER_TIMEOUT_S | 10 | a connection must send a request's headers within this |
| SEQSERVE_BODY_TIMEOUT_S | 10 | and its body within this once the headers are in (408 otherwise) |
| SEQSERVE_API_KEYS | (none: open) | comma-separated keys; requests then need Authorization: Bearer <key> |
| SEQSERVE_OPEN_PATHS | /livez,/readyz,/metrics,/v2/health/live,/v2/health/ready | paths that need no key (probes, scrapers) |
| SEQSERVE_CORS_ORIGINS | (none: CORS off) | comma-separated origins allowed to call from a browser |
| SEQSERVE_ACCESS_LOG | 0 | 1 logs a line per request |
| SEQSERVE_STATE_KEY | (none: derived from each model) | secret that signs HTTP stream state tokens (service.state_token) |
| SEQSERVE_STREAM_MAX_OPEN | 1000 | most open WebSocket streams per worker; the next is closed with 1013 |
| SEQSERVE_STREAM_IDLE_S | 300 | a WebSocket stream with no message for this long is closed (4408) |
| SEQSERVE_STREAM_MAX_STEPS | 1024 | most new steps in one stream message or /stream instance |
| SEQSERVE_CONNECTION_MAX_REQUESTS | 1000 | a keep-alive connection is closed after about this many requests (0: no bound) |
| SEQSERVE_CONNECTION_MAX_AGE_S | 20 | and after about this many seconds open (0: no bound); see service.connection_limits |
| SEQSERVE_MODEL_POLL_S | 10 | each worker looks for a newer stored version of each served name this often (0: never); see service.reload |
| SEQSERVE_MODEL_VERSIONS | 2 | most versions of one name a worker keeps loaded (the newest ones) |

Why one torch thread per worker: on a 2-core machine torch's default (one thread per core) makes a
batch-1 server fall to about 1 request/s as soon as the other core is busy, because the intra-op
threads spin waiting for each other; with one thread the event loop, JSON parsing and the forward pass
share the cores without fighting. Scale out with workers (one per core) instead of threads.

Why a 1 MiB body cap (~120,000 numbers): BentoML parses and validates a body on the event loop, and
neither the JSON parser nor pydantic lets go of the GIL while they run, so one body blocks the loop (and
/livez) for as long as it takes: ~45 ms a MiB on one core here (validation plus the float32 arrays),
measured with ``python -m loadtests hostile``. At 1 MiB /livez stays within 100 ms while the
worker is saturated with the heaviest allowed requests; at gRPC's 4 MiB it did not (README, "Limits,
overload and security"). Raise it for large offline batches and accept the slower probes.

Why binary bodies have a cap of their own: the Open Inference Protocol's binary tensors are read with
``np.frombuffer``, a copy at most, with no work per number, so a 4 MiB binary body costs the event
loop less than a small JSON one. Its JSON header is still held to SEQSERVE_MAX_BODY_MB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


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


def _float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise SettingError(name, f"must be a number, got {raw!r}") from None
    if not value >= minimum:  # also refuses nan
        raise SettingError(name, f"must be at least {minimum:g}, got {raw!r}")
    return value


def _list(name: str, default: str = "") -> tuple[str, ...]:
    return tuple(part.strip() for part in os.environ.get(name, default).split(",") if part.strip())


def _secret(name: str, minimum_length: int = 16) -> str:
    raw = os.environ.get(name, "").strip()
    if raw and len(raw) < minimum_length:  # never echo a secret, even a bad one
        raise SettingError(name, f"must be at least {minimum_length} characters (a random secret), got {len(raw)}")
    return raw


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
    max_body_bytes: int
    max_queue_ms: float
    request_timeout_s: float
    header_timeout_s: float
    body_timeout_s: float
    api_keys: tuple[str, ...]
    open_paths: tuple[str, ...]
    cors_origins: tuple[str, ...]
    access_log: bool
    state_key: str = field(default="", repr=False)  # "": tokens signed with a key derived from the model alone
    stream_max_open: int = 1000
    stream_idle_s: float = 300.0
    stream_max_steps: int = 1024
    max_binary_body_bytes: int = 4 << 20
    connection_max_requests: int = 1000  # 0: no bound
    connection_max_age_s: float = 20.0  # 0: no bound
    model_poll_s: float = 10.0  # 0: never look for new versions
    model_versions: int = 2

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            models=_list("SEQSERVE_MODELS"),
            device=os.environ.get("SEQSERVE_DEVICE", "auto"),
            workers=_int("SEQSERVE_WORKERS", 1),
            torch_threads=_int("SEQSERVE_TORCH_THREADS", 1),
            max_batch_size=_int("SEQSERVE_MAX_BATCH_SIZE", 64),
            max_wait_ms=_float("SEQSERVE_MAX_WAIT_MS", 0.0),
            max_instances=_int("SEQSERVE_MAX_INSTANCES", 256),
            max_length=_int("SEQSERVE_MAX_LENGTH", 4096),
            max_body_bytes=int(_float("SEQSERVE_MAX_BODY_MB", 1.0, minimum=0.001) * 2**20),
            max_queue_ms=_float("SEQSERVE_MAX_QUEUE_MS", 100.0, minimum=1.0),
            request_timeout_s=_float("SEQSERVE_REQUEST_TIMEOUT_S", 10.0, minimum=0.01),
            header_timeout_s=_float("SEQSERVE_HEADER_TIMEOUT_S", 10.0, minimum=0.01),
            body_timeout_s=_float("SEQSERVE_BODY_TIMEOUT_S", 10.0, minimum=0.01),
            api_keys=_list("SEQSERVE_API_KEYS"),
            open_paths=_list("SEQSERVE_OPEN_PATHS", "/livez,/readyz,/metrics,/v2/health/live,/v2/health/ready"),
            cors_origins=_list("SEQSERVE_CORS_ORIGINS"),
            access_log=os.environ.get("SEQSERVE_ACCESS_LOG", "0").strip().lower() in ("1", "true", "yes"),
            state_key=_secret("SEQSERVE_STATE_KEY"),
            stream_max_open=_int("SEQSERVE_STREAM_MAX_OPEN", 1000),
            stream_idle_s=_float("SEQSERVE_STREAM_IDLE_S", 300.0, minimum=0.01),
            stream_max_steps=_int("SEQSERVE_STREAM_MAX_STEPS", 1024),
            max_binary_body_bytes=int(_float("SEQSERVE_MAX_BINARY_BODY_MB", 4.0, minimum=0.001) * 2**20),
            connection_max_requests=_int("SEQSERVE_CONNECTION_MAX_REQUESTS", 1000, minimum=0),
            connection_max_age_s=_float("SEQSERVE_CONNECTION_MAX_AGE_S", 20.0),
            model_poll_s=_float("SEQSERVE_MODEL_POLL_S", 10.0),
            model_versions=_int("SEQSERVE_MODEL_VERSIONS", 2),
        )
