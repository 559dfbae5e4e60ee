"""The official Triton client (``tritonclient.http``) against one real ``bentoml serve`` of tiny models.

Liveness, readiness, metadata, and ``infer`` with JSON and with binary inputs and outputs for both
tasks, ragged lengths included; every answer equals /classify's or /forecast's within 1e-6.
"""

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from loadtests.runner import batch_sizes
from loadtests.server import running_server
from tests import tiny_models


@pytest.fixture(scope="module")
def server():
    tags = {"clf": tiny_models.store_classifier("triton-clf"), "fc": tiny_models.store_forecaster("triton-fc")}
    with running_server({"SEQSERVE_MODELS": f"{tags['clf']},{tags['fc']}"}) as url:
        yield url, tags


@pytest.fixture(scope="module")
def client(server):
    url, _ = server
    with triton.InferenceServerClient(url.removeprefix("http://"), connection_timeout=30, network_timeout=30) as client:
        yield client


def infer_input(name: str, array: np.ndarray, binary: bool) -> triton.InferInput:
    item = triton.InferInput(name, list(array.shape), {np.float32: "FP32", np.int64: "INT64"}[array.dtype.type])
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def test_health_and_metadata(client, server):
    _, tags = server
    name, version = tags["fc"].split(":")
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data", "model_configuration"]
    assert client.is_model_ready(name) and client.is_model_ready(name, version)
    meta = client.get_model_metadata(name, version)
    assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [("forecast", [-1, 5, 1]), ("quantiles", [-1, 3, 5, 1])]
    assert not client.is_model_ready("no-such-model")
    config = client.get_model_config(name, version)  # what perf_analyzer reads before its first request
    assert (config["name"], config["max_batch_size"]) == (name, 0)
    assert [(o["name"], o["dims"]) for o in config["output"]] == [("forecast", [-1, 5, 1]), ("quantiles", [-1, 3, 5, 1])]
    with pytest.raises(InferenceServerException, match="is not served"):
        client.get_model_config("no-such-model")


@pytest.mark.parametrize("binary", [False, True])
def test_classifier_infer_equals_classify(client, server, binary):
    url, tags = server
    name, version = tags["clf"].split(":")
    values = np.random.default_rng(4).normal(size=(4, 11, 3)).astype(np.float32)
    lengths = np.array([11, 3, 7, 1], np.int64)
    outputs = [triton.InferRequestedOutput(o, binary_data=binary) for o in ("probabilities", "label_index", "label")]
    inputs = [infer_input("sequence", values, binary), infer_input("lengths", lengths, binary)]
    result = client.infer(name, inputs, model_version=version, outputs=outputs, request_id="q7")
    expected = httpx.post(f"{url}/classify", json={"instances": [
        {"sequence": values[i, :n].tolist(), "model": tags["clf"]} for i, n in enumerate(lengths)]}).json()
    np.testing.assert_allclose(result.as_numpy("probabilities"), [list(e["probabilities"].values()) for e in expected], atol=1e-6)
    assert result.as_numpy("label_index").tolist() == [e["label_index"] for e in expected]
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert labels == [e["label"] for e in expected]
    assert result.get_response()["id"] == "q7"


@pytest.mark.parametrize("binary", [False, True])
def test_forecaster_infer_equals_forecast(client, server, binary):
    url, tags = server
    name, _ = tags["fc"].split(":")
    history = np.random.default_rng(5).normal(size=(3, 30, 1)).astype(np.float32)
    lengths = np.array([30, 12, 20], np.int64)
    inputs = [infer_input("history", history, binary), infer_input("lengths", lengths, binary)]
    # No outputs named: tritonclient asks for all of them, in binary.
    result = client.infer(name, inputs) if binary else client.infer(
        name, inputs, outputs=[triton.InferRequestedOutput(o, binary_data=False) for o in ("forecast", "quantiles")])
    expected = httpx.post(f"{url}/forecast", json={"instances": [
        {"history": history[i, :n, 0].tolist(), "model": tags["fc"]} for i, n in enumerate(lengths)]}).json()
    np.testing.assert_allclose(result.as_numpy("forecast")[:, :, 0], [e["forecast"] for e in expected], atol=1e-6)
    quantiles = [[e["quantiles"][level] for level in ("0.1", "0.5", "0.9")] for e in expected]
    np.testing.assert_allclose(result.as_numpy("quantiles")[..., 0], quantiles, atol=1e-6)


def test_errors_come_back_through_the_client(client, server):
    _, tags = server
    name, _ = tags["clf"].split(":")
    values = np.zeros((1, 4, 2), np.float32)  # the classifier reads 3 features
    with pytest.raises(InferenceServerException, match="sequence: shape \\[1, 4, 2\\] has 2 features but"):
        client.infer(name, [infer_input("sequence", values, True)])
    with pytest.raises(InferenceServerException, match="/stream"):
        client.infer(name, [infer_input("sequence", np.zeros((1, 4, 3), np.float32), True)], sequence_id=9, sequence_start=True)


def test_v2_instances_go_through_the_models_batcher_and_routes_label_metrics_by_template(client, server):
    url, tags = server
    name, _ = tags["clf"].split(":")

    def instances() -> float:
        return batch_sizes(httpx.get(f"{url}/metrics").text).get(tags["clf"], {"sum": 0.0})["sum"]

    before = instances()
    client.infer(name, [infer_input("sequence", np.zeros((5, 4, 3), np.float32), True)])
    assert instances() - before == 5
    for made_up in ("a", "b", "c"):
        assert not client.is_model_ready(f"made-up-{made_up}")
    assert httpx.get(f"{url}/v2/made-up-d").status_code == 404
    metrics = httpx.get(f"{url}/metrics").text
    assert 'endpoint="/v2/models/{name}/infer"' in metrics and 'endpoint="/v2/models/{name}/ready"' in metrics
    assert 'endpoint="/v2{rest:path}"' in metrics
    assert "made-up-a" not in metrics and "made-up-d" not in metrics


def test_a_binary_request_over_the_json_cap_is_served_within_the_binary_cap(client, server):
    _, tags = server
    name, _ = tags["clf"].split(":")
    values = np.random.default_rng(6).normal(size=(256, 400, 3)).astype(np.float32)  # 1.2 MiB: over the 1 MiB JSON cap
    result = client.infer(name, [infer_input("sequence", values, True)], outputs=[triton.InferRequestedOutput("label_index")])
    assert result.as_numpy("label_index").shape == (256,)
    with pytest.raises(InferenceServerException, match="SEQSERVE_MAX_BODY_MB"):
        client.infer(name, [infer_input("sequence", values[:, :100], False)])  # a quarter of those steps as JSON: ~2 MiB
