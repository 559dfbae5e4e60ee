"""The HTTP service in-process (BentoML's ASGI app under starlette's TestClient): every endpoint and every 4xx."""

import math

import numpy as np
import pytest

from models.artifact import load_artifact
from tests import tiny_models
from tests.service_client import in_process, served_answers


@pytest.fixture(scope="module")
def tags():
    return {"clf": tiny_models.store_classifier("svc-clf"), "fc": tiny_models.store_forecaster("svc-fc"),
            "other-clf": tiny_models.store_classifier("svc-other-clf", seed=1)}


@pytest.fixture(scope="module")
def client(tags):
    env = {"SEQSERVE_MODELS": ",".join(tags.values()), "SEQSERVE_MAX_INSTANCES": "8", "SEQSERVE_MAX_LENGTH": "100"}
    with in_process(env) as client:
        yield client


def sequence(steps: int, seed: int = 0, features: int = 3) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(steps, features)).round(4).tolist()


def post(client, path, *instances):
    return client.post(path, json={"instances": list(instances)})


def error_of(response) -> str:
    assert response.status_code == 400, response.text
    return response.json()["error"]


# ---------------------------------------------------------------------------------------------- answers


def test_the_workers_bound_onednns_cache_of_shapes(client):
    # With oneDNN's default (1,024 primitives) random request shapes grew a worker past 1 GiB (service.app).
    import os

    from service.app import ONEDNN_PRIMITIVE_CACHE_CAPACITY

    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(ONEDNN_PRIMITIVE_CACHE_CAPACITY) == "32"


def test_models_lists_every_served_model(client, tags):
    models = {m["tag"]: m for m in client.get("/models").json()}
    assert set(models) == set(tags.values())
    clf, fc = models[tags["clf"]], models[tags["fc"]]
    assert clf["task"] == "classify" and clf["default"] and clf["labels"] == ["walk", "run", "sit", "jump"]
    assert clf["features"] == ["x", "y", "z"] and clf["architecture"]["cell"] == "gru"
    assert clf["metrics"]["test"]["accuracy"] == 0.5 and clf["created"]
    assert (fc["task"], fc["lookback"], fc["horizon"], fc["quantiles"]) == ("forecast", 12, 5, [0.1, 0.5, 0.9])
    assert fc["targets"] == fc["features"][:1] and clf["targets"] == []  # what a forecast answers, of the inputs


def test_classify_answers_each_instance_in_order_and_matches_the_model(client, tags):
    seqs = [sequence(n, seed=n) for n in (5, 40, 1, 17)]
    answers = post(client, "/classify", *({"sequence": s} for s in seqs)).json()
    model = load_artifact(tags["clf"])
    for seq, answer in zip(seqs, answers):
        expected = served_answers(model, [np.asarray(seq, dtype=np.float32)])[0]  # alone, batch of one
        assert answer["model"] == tags["clf"]
        assert answer["label"] == expected["label"] and answer["label_index"] == expected["label_index"]
        assert list(answer["probabilities"]) == ["walk", "run", "sit", "jump"]
        assert math.isclose(sum(answer["probabilities"].values()), 1.0, abs_tol=1e-5)
        for label, p in expected["probabilities"].items():
            assert abs(answer["probabilities"][label] - p) < 1e-5
        assert answer["label"] == max(answer["probabilities"], key=answer["probabilities"].get)


def test_model_can_be_named_by_name_or_tag(client, tags):
    by_name = post(client, "/classify", {"sequence": sequence(4), "model": "svc-clf"}).json()[0]
    by_tag = post(client, "/classify", {"sequence": sequence(4), "model": tags["clf"]}).json()[0]
    assert by_name == by_tag


def test_a_request_level_model_answers_the_instances_that_name_none(client, tags):
    body = {"model": "svc-other-clf", "instances": [{"sequence": sequence(4)}, {"sequence": sequence(4), "model": "svc-clf"}]}
    assert [a["model"] for a in client.post("/classify", json=body).json()] == [tags["other-clf"], tags["clf"]]
    assert [a["model"] for a in post(client, "/classify", {"sequence": sequence(4)}).json()] == [tags["clf"]]  # the default
    fc = client.post("/forecast", json={"model": "svc-fc", "instances": [{"history": list(range(20))}]}).json()[0]
    streamed = client.post("/stream/forecast", json={"model": tags["fc"], "instances": [{"steps": list(range(20))}]}).json()[0]
    assert fc["model"] == streamed["model"] == tags["fc"] and streamed["forecast"] == fc["forecast"]


@pytest.mark.parametrize(
    "path, model, words",
    [
        ("/classify", "nope", ["model: unknown model 'nope'", "svc-clf"]),
        ("/classify", "svc-fc", ["model: ", "is a forecast model", "/forecast"]),
        ("/forecast", "svc-clf", ["model: ", "is a classify model", "/classify"]),
        ("/stream/classify", "nope", ["model: unknown model 'nope'"]),
        ("/stream/forecast", "svc-clf", ["model: ", "is a classify model", "/stream/classify"]),
        ("/stream/classify", "svc-other-clf", ["model: svc-other-clf:", "cannot stream"]),
        ("/classify", 5, ["model: Input should be a valid string"]),
    ],
)
def test_a_bad_request_level_model_gets_a_400_naming_the_request_field(client, path, model, words):
    instance = {"history": list(range(20))} if path == "/forecast" else {"steps" if "stream" in path else "sequence": sequence(3)}
    message = error_of(client.post(path, json={"model": model, "instances": [instance]}))
    assert all(w in message for w in words) and "instances[" not in message, message


def test_forecast_answers_in_the_history_scale_with_ordered_quantiles(client, tags):
    history = (np.sin(np.arange(30) / 3) + 5).tolist()
    small, large = post(client, "/forecast", {"history": history}, {"history": [v * 1000 for v in history]}).json()
    assert small["model"] == tags["fc"] and small["horizon"] == 5 and len(small["forecast"]) == 5
    np.testing.assert_allclose(np.array(large["forecast"]), np.array(small["forecast"]) * 1000, rtol=1e-3)
    q = small["quantiles"]
    assert list(q) == ["0.1", "0.5", "0.9"] and q["0.5"] == small["forecast"]
    assert all(lo <= mid <= hi for lo, mid, hi in zip(q["0.1"], q["0.5"], q["0.9"]))
    expected = served_answers(load_artifact(tags["fc"]), [np.asarray(history[-12:], dtype=np.float32)[:, None]])[0]
    np.testing.assert_allclose(small["forecast"], expected["forecast"], atol=1e-5)


def test_forecast_accepts_one_list_per_step_too(client):
    flat = post(client, "/forecast", {"history": list(range(20))}).json()[0]
    nested = post(client, "/forecast", {"history": [[v] for v in range(20)]}).json()[0]
    assert flat == nested


def test_readyz_livez_and_openapi(client):
    assert client.get("/readyz").status_code == 200
    assert client.get("/livez").status_code == 200
    spec = client.get("/docs.json").json()
    assert {"/classify", "/forecast"} <= set(spec["paths"])
    text = str(spec)
    assert "one list of feature values per time step" in text and "examples" in text


def test_the_api_page_describes_the_settings_the_service_read_at_import(client, monkeypatch):
    monkeypatch.setenv("SEQSERVE_MAX_INSTANCES", "99")  # after import: the service does not read it again
    description = client.get("/docs.json").json()["info"]["description"]
    assert "8 instances per request, 100 steps per" in description


# ---------------------------------------------------------------------------------------------- 4xx


@pytest.mark.parametrize(
    "instance, words",
    [
        ({"sequence": [[1.0, 2.0]]}, ["instances[0].sequence", "step 0 has 2 features", "expects 3"]),
        ({"sequence": []}, ["instances[0].sequence", "is empty"]),
        ({"sequence": [[1.0, 2.0, 3.0]] * 101}, ["instances[0].sequence", "101 steps", "limit is 100"]),
        ({"sequence": [[1, 2, 3]], "model": "nope"}, ["instances[0].model", "unknown model 'nope'", "svc-clf"]),
        ({"sequence": [[1, 2, 3]], "model": "svc-fc"}, ["instances[0].model", "is a forecast model", "/forecast"]),
    ],
)
def test_bad_classify_instances_get_a_400_naming_index_field_and_problem(client, instance, words):
    message = error_of(post(client, "/classify", {"sequence": sequence(3)}, instance))
    assert all(w.replace("[0]", "[1]") in message for w in words), message


@pytest.mark.parametrize(
    "instance, words",
    [
        ({"history": list(range(5))}, ["instances[0].history", "has 5 steps", "needs at least 12"]),
        ({"history": [[1.0, 2.0]] * 20}, ["instances[0].history", "has 2 features", "expects 1"]),
        ({"history": list(range(12)), "model": "svc-clf"}, ["instances[0].model", "is a classify model", "/classify"]),
        ({"history": []}, ["instances[0].history", "is empty"]),
    ],
)
def test_bad_forecast_instances_get_a_400(client, instance, words):
    message = error_of(post(client, "/forecast", instance))
    assert all(w in message for w in words), message


@pytest.mark.parametrize(
    "body, words",
    [
        ('{"instances": [{"sequence": [[1, 2, NaN]]}]}', ["finite_number", "'instances', 0, 'sequence', 0, 2"]),
        ('{"instances": [{"sequence": [[1, 2, Infinity]]}]}', ["finite_number"]),
        ('{"instances": [{"sequence": [[1, "a", 3]]}]}', ["float_type", "'sequence', 0, 1"]),
        ('{"instances": [{"sequence": [[1, "2.5", 3]]}]}', ["float_type", "'sequence', 0, 1"]),
        ('{"instances": [{"sequence": [[1, true, 3]]}]}', ["float_type", "'sequence', 0, 1"]),
        ('{"instances": [{"sequence": [[1, 2, 3]], "model": 5}]}', ["string_type", "'model'"]),
        ('{"instances": null}', ["list_type", "'instances'"]),
        ('{"instances": [{"seq": [[1, 2, 3]]}]}', ["missing", "sequence"]),
        ('{"instances": [{"sequence": [1, 2, 3]}]}', ["list_type", "'sequence', 0"]),
        ('{"instances": [{"sequence": [[1, 2, 3]], "colour": 1}]}', ["extra_forbidden", "colour"]),
        ('{"instances": ', ["json_invalid"]),
        ('{"rows": []}', ["missing", "instances"]),
        ('[]', ["model_type", "body: Input should be an object"]),
    ],
)
def test_malformed_bodies_get_a_400_naming_the_location(client, body, words):
    response = client.post("/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    text = str(response.json())
    assert all(w in text for w in words), text


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"instances": [{"sequence": [[1, 2, NaN]]}]}', "instances[0].sequence[0][2]: Input should be a finite number"),
        ('{"instances": [{"sequence": [[1, true, 3]]}]}', "instances[0].sequence[0][1]: Input should be a valid number"),
        ('{"instances": [{"sequence": [[1, 2, 3]]}, {"seq": []}]}', "instances[1].sequence: Field required"),
        ('{"instances": ', "body: Invalid JSON"),
    ],
)
def test_pydantic_400s_name_instance_field_and_problem_like_every_other_400(client, body, message):
    response = client.post("/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"].startswith(message), response.json()["error"]
    assert response.headers["content-length"] == str(len(response.content))


def test_request_level_limits(client):
    assert "limit is 8" in error_of(post(client, "/classify", *({"sequence": sequence(2)} for _ in range(9))))
    assert "instances: is empty" in error_of(post(client, "/classify"))


def test_the_server_keeps_serving_after_bad_requests(client):
    for _ in range(3):
        post(client, "/classify", {"sequence": [[float("1e39")] * 3]})
    assert post(client, "/classify", {"sequence": sequence(3)}).status_code == 200
