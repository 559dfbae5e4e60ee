"""The /v2 routes in-process: answers equal /classify and /forecast, and every refusal is the protocol's 4xx."""

import gzip
import json

import numpy as np
import pytest

from tests import tiny_models
from tests.service_client import in_process

KEY = {"authorization": "Bearer v2-test-key-0123456789"}


@pytest.fixture(scope="module")
def tags():
    return {"clf": tiny_models.store_classifier("v2svc-clf"), "fc": tiny_models.store_forecaster("v2svc-fc")}


@pytest.fixture(scope="module")
def client(tags):
    env = {
        "SEQSERVE_MODELS": f"{tags['clf']},{tags['fc']}", "SEQSERVE_MAX_INSTANCES": "8", "SEQSERVE_MAX_LENGTH": "100",
        "SEQSERVE_API_KEYS": KEY["authorization"].split()[1], "SEQSERVE_MAX_BODY_MB": "0.01", "SEQSERVE_MAX_BINARY_BODY_MB": "0.05",
    }
    with in_process(env) as client:
        client.headers.update(KEY)
        yield client


def name_version(tag: str) -> tuple[str, str]:
    name, version = tag.split(":")
    return name, version


def tensor_json(name: str, array: np.ndarray, datatype: str = "FP32") -> dict:
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.ravel().tolist()}


def binary_body(request: dict, arrays: list[np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """``request`` whose inputs carry binary_data_size for ``arrays``, in order, and the arrays' bytes after it."""
    head = json.dumps(request).encode()
    return head + b"".join(a.tobytes() for a in arrays), {"inference-header-content-length": str(len(head))}


def test_classifier_answers_equal_classify_for_ragged_lengths(client, tags):
    name, version = name_version(tags["clf"])
    rng = np.random.default_rng(1)
    values = rng.normal(size=(3, 9, 3)).astype(np.float32)
    lengths = np.array([9, 4, 1], np.int64)
    request = {"id": "x", "inputs": [tensor_json("sequence", values), tensor_json("lengths", lengths, "INT64")]}
    answer = client.post(f"/v2/models/{name}/versions/{version}/infer", json=request)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model_name"], body["model_version"], body["id"]) == (name, version, "x")
    outputs = {o["name"]: o for o in body["outputs"]}
    expected = client.post("/classify", json={"instances": [
        {"sequence": values[i, :n].tolist(), "model": tags["clf"]} for i, n in enumerate(lengths)]}).json()
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    for row, e in zip(probabilities, expected):
        np.testing.assert_allclose(row, list(e["probabilities"].values()), atol=1e-6)
    assert outputs["label"]["data"] == [e["label"] for e in expected]
    assert outputs["label_index"]["data"] == [e["label_index"] for e in expected]


def test_forecaster_answers_in_binary_equal_forecast(client, tags):
    name, _ = name_version(tags["fc"])
    history = np.random.default_rng(2).normal(size=(2, 20, 1)).astype(np.float32)
    lengths = np.array([20, 12], np.int32)
    request = {"inputs": [
        {"name": "history", "datatype": "FP32", "shape": [2, 20, 1], "parameters": {"binary_data_size": history.nbytes}},
        {"name": "lengths", "datatype": "INT32", "shape": [2], "parameters": {"binary_data_size": lengths.nbytes}},
    ], "parameters": {"binary_data_output": True}}
    body, headers = binary_body(request, [history, lengths])
    answer = client.post(f"/v2/models/{name}/infer", content=body, headers={**headers, "content-type": "application/octet-stream"})
    assert answer.status_code == 200, answer.text
    start = int(answer.headers["inference-header-content-length"])
    heads = json.loads(answer.content[:start])["outputs"]
    blobs, offset = {}, start
    for head in heads:
        size = head["parameters"]["binary_data_size"]
        blobs[head["name"]] = np.frombuffer(answer.content[offset:offset + size], np.float32).reshape(head["shape"])
        offset += size
    expected = client.post("/forecast", json={"instances": [
        {"history": history[i, :n, 0].tolist(), "model": tags["fc"]} for i, n in enumerate(lengths)]}).json()
    for i, e in enumerate(expected):
        np.testing.assert_allclose(blobs["forecast"][i, :, 0], e["forecast"], atol=1e-6)
        for q, level in enumerate([0.1, 0.5, 0.9]):
            np.testing.assert_allclose(blobs["quantiles"][i, q, :, 0], e["quantiles"][str(level)], atol=1e-6)


def test_server_and_model_metadata_health_and_readiness(client, tags):
    name, version = name_version(tags["fc"])
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data", "model_configuration"]
    assert client.get("/v2/health/live").status_code == 200 and client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get(f"/v2/models/{name}/versions/{version}").json()
    assert meta["name"] == name and meta["versions"] == [version]
    assert client.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    for path in (f"/v2/models/{name}/config", f"/v2/models/{name}/versions/{version}/config"):
        config = client.get(path).json()
        assert (config["name"], config["max_batch_size"]) == (name, 0), path
        assert [i["name"] for i in config["input"]] == ["history", "lengths"]


def test_unknown_models_and_versions_are_404(client, tags):
    name, _ = name_version(tags["clf"])
    for path in ("/v2/models/nope", f"/v2/models/{name}/versions/nope/ready", f"/v2/models/{tags['clf']}",
                 "/v2/models/nope/config", f"/v2/models/{name}/versions/nope/config"):
        answer = client.get(path)
        assert answer.status_code == 404 and "is not served; served models:" in answer.json()["error"], path
    answer = client.post("/v2/models/nope/infer", json={"inputs": []})
    assert answer.status_code == 404


def test_other_v2_paths_and_methods_get_json_404_and_405(client):
    answer = client.get("/v2/models/a/b/c")
    assert answer.status_code == 404
    assert answer.json() == {"error": "path: '/v2/models/a/b/c' is not a route of the Open Inference Protocol; its routes are /v2, /v2/health/live, /v2/health/ready and /v2/models/<name>[/versions/<version>][/ready|/config|/infer]; GET /models lists the names"}
    answer = client.get("/v2/models/any/infer")
    assert (answer.status_code, answer.headers["allow"]) == (405, "POST")
    assert answer.json() == {"error": "method: GET is not allowed on '/v2/models/any/infer'; send POST"}
    answer = client.post("/v2/health/live", json={})
    assert (answer.status_code, answer.headers["allow"]) == (405, "GET, HEAD")


def test_refusals_name_the_input_and_the_problem(client, tags):
    name, _ = name_version(tags["fc"])
    short = tensor_json("history", np.zeros((2, 5, 1), np.float32))  # the forecaster reads 12 steps
    answer = client.post(f"/v2/models/{name}/infer", json={"inputs": [short]})
    assert answer.status_code == 400
    assert answer.json() == {"error": f"history[0]: has 5 steps but {tags['fc']} needs at least 12"}
    answer = client.post(f"/v2/models/{name}/infer", json={"inputs": [short], "parameters": {"sequence_id": 3}})
    assert answer.status_code == 400 and "/stream" in answer.json()["error"]
    huge = np.stack([np.arange(12, dtype=np.float32), np.tile(np.float32([3.0e38, 3.4e38]), 6)])[:, :, None]  # (2, 12, 1)
    body, headers = binary_body({"inputs": [{"name": "history", "datatype": "FP32", "shape": [2, 12, 1],
                                             "parameters": {"binary_data_size": huge.nbytes}}]}, [huge])
    answer = client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(f"history[1]: the values are too large for {tags['fc']}: its output overflowed")


def test_the_guard_takes_tritonclients_content_types_on_v2_only(client, tags):
    name, _ = name_version(tags["clf"])
    request = json.dumps({"inputs": [tensor_json("sequence", np.zeros((1, 2, 3), np.float32))]}).encode()
    for content_type in (None, "application/octet-stream", "application/json"):
        headers = {"content-type": content_type} if content_type else {}
        answer = client.post(f"/v2/models/{name}/infer", content=request, headers=headers)
        assert answer.status_code == 200, (content_type, answer.text)
    assert client.post(f"/v2/models/{name}/infer", content=request, headers={"content-type": "text/plain"}).status_code == 415
    assert client.post("/classify", content=b'{"instances": []}', headers={"content-type": "application/octet-stream"}).status_code == 415


def test_a_compressed_body_is_refused_naming_its_content_encoding(client, tags):
    name, _ = name_version(tags["clf"])
    request = json.dumps({"inputs": [tensor_json("sequence", np.zeros((1, 2, 3), np.float32))]}).encode()
    for path in (f"/v2/models/{name}/infer", "/classify"):
        answer = client.post(path, content=gzip.compress(request), headers={"content-type": "application/json", "content-encoding": "gzip"})
        assert answer.status_code == 415
        assert answer.json() == {"error": "content-encoding: gzip is not accepted; send the body uncompressed"}
    for identity in ("identity", "Identity, ", ""):
        plain = client.post(f"/v2/models/{name}/infer", content=request, headers={"content-type": "application/json", "content-encoding": identity})
        assert plain.status_code == 200, (identity, plain.text)
    assert client.get(f"/v2/models/{name}", headers={"content-encoding": "gzip"}).status_code == 200  # no body, nothing to refuse


def test_binary_bodies_have_their_own_cap_and_json_parts_stay_within_the_json_cap(client, tags):
    name, _ = name_version(tags["clf"])
    values = np.random.default_rng(3).normal(size=(8, 100, 3)).astype(np.float32)  # 9.4 KiB; ~45 KiB as JSON, over its cap
    request = {"inputs": [{"name": "sequence", "datatype": "FP32", "shape": [8, 100, 3], "parameters": {"binary_data_size": values.nbytes}}]}
    body, headers = binary_body(request, [values])
    assert client.post(f"/v2/models/{name}/infer", content=body, headers=headers).status_code == 200
    as_json = client.post(f"/v2/models/{name}/infer", json={"inputs": [tensor_json("sequence", values)]})
    assert as_json.status_code == 413 and "SEQSERVE_MAX_BODY_MB" in as_json.json()["error"]
    big = {"name": "sequence", "datatype": "FP32", "shape": [8, 100, 3], "parameters": {"binary_data_size": 6 * values.nbytes}}
    body, headers = binary_body({"inputs": [big]}, [values] * 6)
    too_big = client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
    assert too_big.status_code == 413 and "SEQSERVE_MAX_BINARY_BODY_MB" in too_big.json()["error"]
    padded = b" " * 12000 + json.dumps(request).encode()  # a JSON part over the JSON cap, sent as "binary"
    answer = client.post(f"/v2/models/{name}/infer", content=padded + values.tobytes(),
                         headers={"inference-header-content-length": str(len(padded))})
    assert answer.status_code == 413 and "its JSON part is" in answer.json()["error"]


def test_api_keys_guard_v2_but_not_its_health_probes(client, tags):
    name, _ = name_version(tags["clf"])
    bare = {"authorization": ""}
    assert client.get(f"/v2/models/{name}", headers=bare).status_code == 401
    assert client.get(f"/v2/models/{name}/config", headers=bare).status_code == 401
    assert client.get("/v2", headers=bare).status_code == 401
    assert client.get("/v2/health/live", headers=bare).status_code == 200
    assert client.get("/v2/health/ready", headers=bare).status_code == 200



def test_two_loaded_versions_of_a_name_are_listed_and_each_answers_as_classify():
    """Live updates keep the newest versions of a name loaded: v2 lists them all, the name alone reaches the
    newest, a version its own, and each answer equals that version's /classify."""
    import asyncio
    import dataclasses

    from service.config import Settings
    from service.lanes import load_lanes
    from service.reload import StoreWatcher, watched
    from service.schemas import ClassifyInstance
    from service.v2.routes import infer_arrays, interface

    name = "v2live-clf"
    first = tiny_models.store_classifier(name, seed=0)
    settings = dataclasses.replace(Settings.from_env(), model_versions=2)
    lanes = load_lanes(settings, [first])
    second = tiny_models.store_classifier(name, seed=1)
    assert asyncio.run(StoreWatcher(lanes, settings, *watched((), lanes)).check()) == [second]
    versions = [first.split(":")[1], second.split(":")[1]]
    for tag in (name, first, second):
        meta = interface(lanes.get(tag), lanes).metadata()
        assert meta["versions"] == versions
    values = np.random.default_rng(0).normal(size=(2, 6, 3)).astype(np.float32)
    answered = []
    for tag in (first, second):
        outputs = asyncio.run(infer_arrays(lanes.get(tag), values, np.array([6, 4])))
        instances = [ClassifyInstance(sequence=values[0].tolist(), model=tag), ClassifyInstance(sequence=values[1, :4].tolist(), model=tag)]
        expected = json.loads(asyncio.run(lanes.classify(instances)))
        np.testing.assert_allclose(outputs["probabilities"], [list(e["probabilities"].values()) for e in expected], atol=1e-6)
        answered.append(outputs["probabilities"])
    assert np.abs(answered[0] - answered[1]).max() > 1e-3  # two models indeed, each reached by its own version
    assert interface(lanes.get(name), lanes).version == versions[1]
