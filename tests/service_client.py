"""The service in-process under starlette's TestClient, with the settings a test module needs; a lane's answers without it."""

import importlib
import os
from contextlib import contextmanager
from typing import Iterator

from starlette.testclient import TestClient


@contextmanager
def in_process(env: dict[str, str]) -> Iterator[TestClient]:
    """``service.app`` imported afresh with ``env`` set (settings are read once, at import), served in-process."""
    import prometheus_client

    import service.app

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        importlib.reload(service.app)
        with TestClient(app=service.app.SeqServe.to_asgi()) as client:
            yield client
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        # BentoML registers its request metrics once per app; let the next module's app register them again.
        registry = prometheus_client.REGISTRY
        for collector in list(registry._collector_to_names):
            if any(name.startswith("bentoml_service_") for name in registry._collector_to_names[collector]):
                registry.unregister(collector)


def served_answers(model, arrays: list) -> list[dict]:
    """The JSON answers ``model``'s lane gives ``arrays`` (checked inputs) run as one batch: the service's own
    path (forward pass, then answer), without a server or a batcher."""
    from service.config import Settings
    from service.lanes import LANE_FOR_TASK
    from service.state_token import StateSigner

    lane = LANE_FOR_TASK[model.card.task](model, Settings.from_env(), StateSigner("", []))
    return [lane.answer(output) for output in lane.forward.run_batch(arrays)]
