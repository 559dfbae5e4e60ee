"""Hostile and careless input, in-process: caps before parsing, small errors, finite answers, keys, no redirects.

Sizes are scaled down (a body cap of 64 KiB) so every case runs in milliseconds; the full-size
measurements are in ``python -m loadtests hostile``.
"""

import asyncio
import json
import logging
from dataclasses import replace

import numpy as np
import pytest

from service.config import Settings
from service.errors import REFUSED
from service.guard import RequestGuard
from tests import tiny_models
from tests.service_client import in_process

ENV = {"SEQSERVE_MAX_BODY_MB": "0.0625", "SEQSERVE_API_KEYS": "k-one,k-two", "SEQSERVE_MAX_LENGTH": "400"}
KEY = {"authorization": "Bearer k-two"}


@pytest.fixture(scope="module")
def client():
    clf, fc = tiny_models.store_classifier("hard-clf"), tiny_models.store_forecaster("hard-fc")
    with in_process({**ENV, "SEQSERVE_MODELS": f"{clf},{fc}"}) as client:
        yield client


def post(client, path, body, headers=None, **kwargs):
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post(path, content=raw, headers={"content-type": "application/json", **KEY, **(headers or {})}, **kwargs)


GOOD = {"instances": [{"sequence": [[0.1, 0.2, 0.3]] * 5}]}


def test_a_good_request_with_a_key_is_answered(client):
    assert post(client, "/classify", GOOD).status_code == 200


# ------------------------------------------------------------------------------------ caps before parsing


def test_a_body_over_the_cap_gets_413_naming_the_limit_before_it_is_read(client):
    body = b'{"instances": [' + b" " * 70_000 + b"]}"
    response = post(client, "/classify", body)
    assert response.status_code == 413
    assert "limit of 0.0625 MiB" in response.json()["error"] and "SEQSERVE_MAX_BODY_MB" in response.json()["error"]


def test_a_streamed_body_that_grows_past_the_cap_gets_413(client):
    def chunks():  # no Content-Length: chunked transfer
        yield b'{"instances": ['
        for _ in range(100):
            yield b" " * 1000

    response = client.post("/classify", content=chunks(), headers={"content-type": "application/json", **KEY})
    assert response.status_code == 413


def test_past_the_memory_budget_for_bodies_in_flight_the_guard_refuses_like_the_door():
    """A body that would pass the budget (two bodies at the cap) gets the 503 every overload gets, unread."""
    guard = RequestGuard(None, replace(Settings.from_env(), max_body_bytes=1 << 20, api_keys=()))
    guard.inflight = 2 << 20
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/classify/",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")]}
    asyncio.run(guard(scope, None, send))
    start, body = sent
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
    assert json.loads(body["body"]) == {
        "error": "the server is busy with other large requests; retry shortly", "retry_after_s": 1, "retry_after_ms": 1000,
    }
    assert scope[REFUSED] == 1  # on the server's own scope, though the guard answered for /classify


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", ""])
def test_only_json_is_accepted(client, content_type):
    response = client.post("/classify", content=json.dumps(GOOD), headers={"content-type": content_type, **KEY})
    assert response.status_code == 415
    assert "send application/json" in response.json()["error"]


def test_a_body_full_of_bad_values_gets_a_small_400(client):
    body = {"instances": [{"sequence": [["x", "y", "z"]] * 1000}] * 3}  # 9,000 bad values, ~50 KB
    response = post(client, "/classify", body)
    assert response.status_code == 400
    assert len(response.content) < 2000, len(response.content)
    assert response.json()["error"].startswith("instances[0].sequence[0][0]: Input should be a valid number")
    assert len(response.json()["detail"]) <= 3


def test_a_long_model_name_is_not_echoed_whole(client):
    response = post(client, "/classify", {"instances": [{"sequence": [[1.0, 2.0, 3.0]], "model": "m" * 50_000}]})
    assert response.status_code == 400
    assert len(response.content) < 2000 and "instances[0].model" in response.json()["error"]
    response = post(client, "/classify", {"model": "m" * 50_000, "instances": [{"sequence": [[1.0, 2.0, 3.0]]}]})
    assert response.status_code == 400
    assert len(response.content) < 2000 and response.json()["error"].startswith("model: "), response.text


def test_nan_in_a_flat_history_names_the_step_not_pydantic_internals(client):
    response = post(client, "/forecast", '{"instances": [{"history": [1, 2, 3, NaN]}]}')
    assert response.status_code == 400
    assert response.json()["error"] == "instances[0].history[3]: Input should be a finite number"


def test_a_history_mixing_numbers_and_lists_gets_a_400(client):
    response = post(client, "/forecast", {"instances": [{"history": [1.0, [2.0]] * 10}]})
    assert response.status_code == 400 and "mixes numbers and lists" in response.json()["error"]


# ------------------------------------------------------------------------------------ finite answers only

HUGE = [1e30, 1e35, 1e37, 4e37, 1e38, 3.4e38, -3.4e38]


@pytest.mark.parametrize("magnitude", HUGE)
def test_inputs_near_float32_limits_never_give_non_json(client, magnitude):
    """Every 200 is strict JSON with finite numbers; an instance the model overflows on gets a 400 naming it."""
    good = [[0.1, 0.2, 0.3]] * 5
    classify = post(client, "/classify", {"instances": [{"sequence": good}, {"sequence": [[magnitude] * 3] * 5}]})
    history = (np.sin(np.arange(20)) * magnitude).tolist()
    forecast = post(client, "/forecast", {"instances": [{"history": list(range(20))}, {"history": history}]})
    for response in (classify, forecast):
        if response.status_code == 200:
            json.loads(response.text, parse_constant=lambda c: pytest.fail(f"{c} in a 200 answer"))
        else:
            assert response.status_code == 400, response.text
            assert response.json()["error"].startswith("instances[1]."), response.text
            assert "too large" in response.json()["error"]


def test_a_forecaster_overflowing_on_its_window_gets_a_400_not_nan(client):
    # A window near float32's top whose band reaches past it (a flat one is forecast flat: models.recurrent.window_unit).
    response = post(client, "/forecast", {"instances": [{"history": [3.0e38, 3.4e38] * 10}]})
    assert response.status_code == 400
    assert response.json()["error"].startswith("instances[0].history: the values are too large for hard-fc:")


# ------------------------------------------------------------------------------------ keys, redirects, CORS


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic k-one", "Bearer "])
def test_without_a_valid_key_the_answer_is_401(client, authorization, caplog):
    headers = {"content-type": "application/json"}
    if authorization is not None:
        headers["authorization"] = authorization
    with caplog.at_level(logging.DEBUG):
        response = client.post("/classify", content=json.dumps(GOOD), headers=headers)
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"].startswith("authorization: ")
    assert client.get("/models").status_code == 401
    assert "k-one" not in caplog.text and "k-two" not in caplog.text


def test_probes_stay_open_without_a_key(client):
    # /metrics (open too) only exists in a real `bentoml serve`: tests/test_server.py.
    for path in ("/livez", "/readyz"):
        assert client.get(path).status_code == 200, path


def test_every_key_works(client):
    for key in ("k-one", "k-two"):
        assert post(client, "/classify", GOOD, headers={"authorization": f"Bearer {key}"}).status_code == 200


def test_a_trailing_slash_is_served_not_redirected_to_the_host_header(client):
    response = post(client, "/classify/", GOOD, headers={"host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 200 and "location" not in response.headers


def test_cross_origin_browsers_get_no_cors_permission_by_default(client):
    response = client.options(
        "/classify", headers={"origin": "https://evil.example", "access-control-request-method": "POST"}
    )
    assert "access-control-allow-origin" not in response.headers
