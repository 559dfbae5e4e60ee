"""The Open Inference Protocol codec (service.v2.protocol) without a server, against the official client.

Request bodies are made by ``tritonclient.http`` itself (``InferInput.set_data_from_numpy`` and
``InferenceServerClient.generate_request_body``), and answers are read back with its
``parse_response_body``, so the codec agrees with the client users run, in JSON and in binary.
"""

import json
import struct

import numpy as np
import pytest
import tritonclient.http as triton

from service.v2.protocol import (ModelInterface, ProtocolError, config_type, read_infer_request, server_metadata,
                                 write_infer_response)
from service.v2.tensors import TYPES_KNOWN

CLASSIFIER = ModelInterface(
    name="clf", version="v1", task="classify", versions=["v1"], features=["x", "y", "z"], max_instances=8, max_length=50,
    labels=["walk", "run", "sit", "jump"],
)
FORECASTER = ModelInterface(
    name="fc", version="v2", task="forecast", versions=["v1", "v2"], features=["value"], max_instances=8, max_length=50,
    targets=["value"], lookback=12, horizon=5, quantiles=[0.1, 0.5, 0.9],
)
MAX_JSON = 1 << 20


def request_body(inputs, outputs=None, **options) -> tuple[bytes, str | None]:
    """A body and its Inference-Header-Content-Length (None: all JSON), as tritonclient sends them."""
    body, header_length = triton.InferenceServerClient.generate_request_body(inputs, outputs=outputs, **options)
    return body, None if header_length is None else str(header_length)


def tensor(name: str, array: np.ndarray, binary: bool, datatype: str | None = None) -> triton.InferInput:
    datatype = datatype or {np.float32: "FP32", np.int32: "INT32", np.int64: "INT64"}[array.dtype.type]
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def decode(body: bytes, header_length: str | None, model=CLASSIFIER):
    return read_infer_request(body, header_length, model, MAX_JSON)


def refused(body: bytes, header_length: str | None = None, model=CLASSIFIER, status: int = 400) -> str:
    with pytest.raises(ProtocolError) as caught:
        decode(body, header_length, model)
    assert caught.value.status == status
    return str(caught.value)


def raw(request: dict, binary: bytes | None = None) -> tuple[bytes, str | None]:
    """A hand-made body: ``request`` as JSON, then ``binary`` and the JSON's length as the header, if given."""
    head = json.dumps(request).encode()
    return (head, None) if binary is None else (head + binary, str(len(head)))


GOOD = {"name": "sequence", "datatype": "FP32", "shape": [1, 2, 3], "data": [1, 2, 3, 4, 5, 6]}


@pytest.mark.parametrize("binary", [False, True])
def test_a_ragged_batch_is_decoded_exactly_from_tritonclients_body(binary):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(4, 7, 3)).astype(np.float32)
    values[1, 5:] = np.nan  # padding past lengths[1] is never read, whatever it holds
    lengths = np.array([7, 5, 1, 7], dtype=np.int32)
    body, header_length = request_body([tensor("sequence", values, binary), tensor("lengths", lengths, binary)], request_id="r-1")
    assert (header_length is not None) == binary
    request = decode(body, header_length)
    np.testing.assert_array_equal(request.values[[0, 2, 3]], values[[0, 2, 3]])
    np.testing.assert_array_equal(request.values[1, :5], values[1, :5])
    assert request.values.dtype == np.float32 and request.lengths.tolist() == [7, 5, 1, 7]
    assert request.id == "r-1"
    # tritonclient asks for every output in binary when it names none
    assert request.outputs == {"probabilities": True, "label_index": True, "label": True}


def test_bodies_as_perf_analyzer_and_kserves_client_send_them_are_read():
    """perf_analyzer 2.48's JSON tensor format sends an empty id and a header length equal to the whole JSON body;
    kserve 0.21's ``InferRequest.to_rest`` adds the model's name to the body. Both as captured from the clients."""
    values = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    perf_analyzer = {"id": "", "inputs": [{"name": "sequence", "datatype": "FP32", "shape": [1, 2, 3], "data": values.ravel().tolist()}],
                     "outputs": [{"name": "label", "parameters": {"binary_data": False}}]}
    body = json.dumps(perf_analyzer, separators=(",", ":")).encode()
    request = decode(body, str(len(body)))
    assert request.values.tolist() == values.tolist() and request.outputs == {"label": False} and request.id == ""
    kserve = {"id": "6f1c", "model_name": "clf",
              "inputs": [{"name": "sequence", "shape": [1, 2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}}]}
    head = json.dumps(kserve).encode()
    request = decode(head + values.tobytes(), str(len(head)))
    assert request.values.tolist() == values.tolist() and request.id == "6f1c"


def test_lengths_default_to_every_step_and_nested_json_data_is_read():
    request = decode(*raw({"inputs": [{**GOOD, "data": [[[1, 2, 3], [4, 5, 6]]]}]}))
    assert request.lengths.tolist() == [2] and request.values.tolist() == [[[1, 2, 3], [4, 5, 6]]]
    for outer_levels_only in ([[1, 2, 3, 4, 5, 6]], [[1, 2, 3], [4, 5, 6]]):  # [1, 6]: the last levels flattened; no batch level
        assert decode(*raw({"inputs": [{**GOOD, "data": outer_levels_only}]})).values.tolist() == [[[1, 2, 3], [4, 5, 6]]]
    assert request.outputs == {"probabilities": False, "label_index": False, "label": False} and request.id is None


def test_outputs_are_the_ones_asked_for_in_order_each_json_or_binary():
    values = np.zeros((1, 2, 3), np.float32)
    asked = [triton.InferRequestedOutput("label", binary_data=False), triton.InferRequestedOutput("probabilities", binary_data=True)]
    request = decode(*request_body([tensor("sequence", values, True)], outputs=asked))
    assert list(request.outputs.items()) == [("label", False), ("probabilities", True)]
    request = decode(*raw({"inputs": [GOOD], "outputs": [{"name": "label_index"}], "parameters": {"binary_data_output": True}}))
    assert request.outputs == {"label_index": True}


CLASSIFY_OUTPUTS = {
    "probabilities": np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]], np.float32),
    "label_index": np.array([3, 0], np.int64),
    "label": np.array(["jump", "walk"], dtype=object),
}


@pytest.mark.parametrize("binary", [False, True])
def test_answers_read_back_with_tritonclient(binary):
    asked = [triton.InferRequestedOutput(name, binary_data=binary) for name in CLASSIFY_OUTPUTS]
    request = decode(*request_body([tensor("sequence", np.zeros((2, 2, 3), np.float32), binary)], outputs=asked, request_id="abc"))
    answer, headers = write_infer_response(CLASSIFIER, request, CLASSIFY_OUTPUTS)
    header_length = headers.get("inference-header-content-length")
    assert (header_length is not None) == binary
    result = triton.InferenceServerClient.parse_response_body(answer, header_length=header_length and int(header_length))
    np.testing.assert_array_equal(result.as_numpy("probabilities"), CLASSIFY_OUTPUTS["probabilities"])
    assert result.as_numpy("probabilities").dtype == np.float32
    np.testing.assert_array_equal(result.as_numpy("label_index"), [3, 0])
    # tritonclient gives BYTES as str from JSON data, as bytes from binary data
    assert [x.decode() if binary else x for x in result.as_numpy("label")] == ["jump", "walk"]
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("clf", "v1", "abc")


def test_bytes_outputs_are_length_prefixed_as_triton_does():
    request = decode(*raw({"inputs": [GOOD], "outputs": [{"name": "label", "parameters": {"binary_data": True}}]}))
    answer, headers = write_infer_response(CLASSIFIER, request, CLASSIFY_OUTPUTS)
    start = int(headers["inference-header-content-length"])
    assert answer[start:] == struct.pack("<I", 4) + b"jump" + struct.pack("<I", 4) + b"walk"
    assert json.loads(answer[:start])["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 16}}]


def test_forecaster_answers_with_quantiles_in_binary():
    history = np.arange(2 * 20, dtype=np.float32).reshape(2, 20, 1)
    request = decode(*request_body([tensor("history", history, True)]), model=FORECASTER)
    forecast = np.arange(10, dtype=np.float32).reshape(2, 5, 1)
    quantiles = np.stack([forecast - 1, forecast, forecast + 1], axis=1)  # (N, Q, H, K)
    answer, headers = write_infer_response(FORECASTER, request, {"forecast": forecast, "quantiles": quantiles})
    result = triton.InferenceServerClient.parse_response_body(answer, header_length=int(headers["inference-header-content-length"]))
    np.testing.assert_array_equal(result.as_numpy("forecast"), forecast)
    np.testing.assert_array_equal(result.as_numpy("quantiles"), quantiles)


def test_metadata_lists_inputs_outputs_and_quantile_levels():
    meta = FORECASTER.metadata()
    assert meta["name"] == "fc" and meta["versions"] == ["v1", "v2"]
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [("history", "FP32", [-1, -1, 1]), ("lengths", "INT64", [-1])]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [("forecast", "FP32", [-1, 5, 1]), ("quantiles", "FP32", [-1, 3, 5, 1])]
    assert meta["outputs"][1]["parameters"]["quantile_levels"] == [0.1, 0.5, 0.9]
    assert [o["name"] for o in CLASSIFIER.metadata()["outputs"]] == ["probabilities", "label_index", "label"]
    assert server_metadata("1.0")["extensions"] == ["binary_tensor_data", "model_configuration"]


def test_triton_model_configuration_gives_the_metadatas_whole_shapes():
    """Triton's config for perf_analyzer: max_batch_size 0 makes ``dims`` the whole shapes, so ``lengths`` keeps
    its one dimension (with a batch dimension implied, [N] would leave perf_analyzer none to send)."""
    assert FORECASTER.config() == {
        "name": "fc", "platform": "seqserve_pytorch", "backend": "seqserve", "max_batch_size": 0,
        "input": [{"name": "history", "data_type": "TYPE_FP32", "dims": [-1, -1, 1]},
                  {"name": "lengths", "data_type": "TYPE_INT64", "dims": [-1], "optional": True}],
        "output": [{"name": "forecast", "data_type": "TYPE_FP32", "dims": [-1, 5, 1]},
                   {"name": "quantiles", "data_type": "TYPE_FP32", "dims": [-1, 3, 5, 1]}],
    }
    outputs = CLASSIFIER.config()["output"]
    assert [(o["name"], o["data_type"], o["dims"]) for o in outputs] == [
        ("probabilities", "TYPE_FP32", [-1, 4]), ("label_index", "TYPE_INT64", [-1]), ("label", "TYPE_STRING", [-1])]
    for model in (CLASSIFIER, FORECASTER):  # the same tensors as the metadata, in its order
        meta = model.metadata()
        for kind in ("input", "output"):
            assert [(t["name"], t["dims"]) for t in model.config()[kind]] == [(t["name"], t["shape"]) for t in meta[kind + "s"]]


def test_every_protocol_datatype_has_its_triton_configuration_name():
    names = {datatype: config_type(datatype) for datatype in TYPES_KNOWN}
    assert names["BYTES"] == "TYPE_STRING" and names["FP32"] == "TYPE_FP32" and names["BOOL"] == "TYPE_BOOL"
    assert len(set(names.values())) == len(TYPES_KNOWN)


BINARY_GOOD = np.zeros((1, 2, 3), np.float32).tobytes()


@pytest.mark.parametrize(
    "request_json, binary, message",
    [
        ({"inputs": [{**GOOD, "datatype": "FP64"}]}, None, "sequence: datatype 'FP64' is not accepted; send FP32"),
        ({"inputs": [{**GOOD, "datatype": "FLOAT"}]}, None, "sequence: datatype 'FLOAT' (not a datatype of the protocol) is not accepted"),
        ({"inputs": [{**GOOD, "shape": [1, 2, 4]}]}, None, "sequence: shape [1, 2, 4] has 4 features but clf expects 3"),
        ({"inputs": [{**GOOD, "shape": [1, 3, 3]}]}, None, "sequence: data has 6 values but shape [1, 3, 3] needs 9"),
        ({"inputs": [{**GOOD, "shape": [6]}]}, None, "sequence: shape [6] must be [N, T, F]"),
        ({"inputs": [{**GOOD, "shape": [1, -2, 3]}]}, None, "sequence: shape [1, -2, 3] has a negative dimension"),
        ({"inputs": [{**GOOD, "shape": [1, 2.0, 3]}]}, None, "sequence: shape must be a list of whole numbers"),
        ({"inputs": [{**GOOD, "shape": [10**400, 2, 3]}]}, None, "sequence: shape [1" + "0" * 38 + "… has a dimension past INT64's range"),
        ({"inputs": [{**GOOD, "shape": [1] * 10_000}]}, None, "sequence: shape [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, … must be [N, T, F]"),
        ({"inputs": [{k: v for k, v in GOOD.items() if k != "datatype"}]}, None, "sequence: datatype null (not a datatype of the protocol) is not accepted"),
        ({"inputs": [{**GOOD, "data": None}]}, None, "sequence: data must be a list, got null"),
        ({"inputs": [{**GOOD, "shape": [9, 2, 3]}]}, None, "sequence: has 9 instances; the limit is 8 per request"),
        ({"inputs": [{**GOOD, "shape": [1, 10**12, 3]}]}, None, "sequence: has 1000000000000 steps; the limit is 50"),
        ({"inputs": [{**GOOD, "shape": [0, 2, 3], "data": []}]}, None, "sequence: has no instances"),
        ({"inputs": [{**GOOD, "data": [1, 2, 3, 4, 5, "6"]}]}, None, "sequence: data must hold only numbers for FP32, got strings"),
        ({"inputs": [{**GOOD, "data": [True] * 6}]}, None, "got true/false"),
        ({"inputs": [{**GOOD, "data": [1.5, 2, 3, 4, 5, True]}]}, None, "sequence: data must hold only numbers for FP32, got true/false among them"),
        ({"inputs": [{**GOOD, "data": [[1, 2, 3], [4, 5, False]]}]}, None, "got true/false among them"),
        ({"inputs": [GOOD, {"name": "lengths", "datatype": "INT64", "shape": [1], "data": [True]}]}, None, "lengths: data must hold only whole numbers for INT64, got true/false"),
        ({"inputs": [{**GOOD, "data": [[1, 2], [3, 4], [5, 6]]}]}, None,
         "sequence: data is nested as [3, 2], which does not follow shape [1, 2, 3]: send it flat, or nested as the shape is"),
        ({"inputs": [{**GOOD, "data": [[[1, 2, 3, 4, 5, 6]]]}]}, None, "data is nested as [1, 1, 6], which does not follow shape [1, 2, 3]"),
        ({"inputs": [{**GOOD, "data": [[1, 2, 3], [4, 5]]}]}, None, "sequence: data is ragged"),
        ({"inputs": [{**GOOD, "data": [1, 2, 3, 4, 5, None]}]}, None, "got mixed values or nulls"),
        ({"inputs": [{**GOOD, "data": [1, 2, 3, 4, 5, 1e39]}]}, None, "sequence[0]: step 1, feature 2 is not a finite 32-bit number"),
        ({"inputs": [{k: v for k, v in GOOD.items() if k != "data"}]}, None, "sequence: has neither data nor parameters.binary_data_size"),
        ({"inputs": []}, None, "inputs: must be a non-empty list of tensors; clf takes sequence FP32 [-1, -1, 3]"),
        ({"inputs": [{**GOOD, "name": "history"}]}, None, "inputs[0].name: 'history' is not one of the inputs of clf: sequence, lengths"),
        ({"inputs": [GOOD, GOOD]}, None, "sequence: sent twice"),
        ({"inputs": [{"name": "lengths", "datatype": "INT64", "shape": [1], "data": [2]}]}, None, "inputs: sequence is missing"),
        ({"inputs": [GOOD, {"name": "lengths", "datatype": "INT64", "shape": [1], "data": [3]}]}, None, "lengths[0]: 3 is not between 1 and 2"),
        ({"inputs": [GOOD, {"name": "lengths", "datatype": "INT64", "shape": [1], "data": [0]}]}, None, "lengths[0]: 0 is not between 1 and 2"),
        ({"inputs": [GOOD, {"name": "lengths", "datatype": "INT64", "shape": [2], "data": [1, 2]}]}, None, "lengths: has 2 values but there are 1 instances"),
        ({"inputs": [GOOD, {"name": "lengths", "datatype": "FP32", "shape": [1], "data": [1]}]}, None, "lengths: datatype 'FP32' is not accepted; send INT32 or INT64"),
        ({"inputs": [GOOD, {"name": "lengths", "datatype": "INT64", "shape": [1], "data": [1.5]}]}, None, "lengths: data must hold only whole numbers for INT64, got fractions"),
        ({"inputs": [GOOD, {"name": "lengths", "datatype": "INT32", "shape": [1], "data": [2**32 + 2]}]}, None, "lengths: data holds 4294967298, outside INT32's range"),
        ({"inputs": [GOOD, {"name": "lengths", "datatype": "INT32", "shape": [1], "data": [2 - 2**32]}]}, None, "lengths: data holds -4294967294, outside INT32's range"),
        ({"inputs": [GOOD, {"name": "lengths", "datatype": "INT64", "shape": [1], "data": [2**64 + 2]}]}, None, "lengths: data holds 18446744073709551618, outside INT64's range"),
        ({"inputs": [{**GOOD, "data": [1, 2, 3, 4, 5, 2**130]}]}, None, "sequence[0]: step 1, feature 2 is not a finite 32-bit number"),
        ({"inputs": [{**GOOD, "data": [1, 2, 3, 4, 5, 10**400]}]}, None, "sequence[0]: step 1, feature 2 is not a finite 32-bit number"),
        ({"inputs": [{**GOOD, "data": [1.5, 2, 3, 4, 5, -10**400]}]}, None, "sequence[0]: step 1, feature 2 is not a finite 32-bit number"),
        ({"inputs": [GOOD, {"name": "lengths", "datatype": "INT64", "shape": [2], "data": [1.0, 2**64]}]}, None, "lengths: data holds 18446744073709551616, outside INT64's range"),
        ({"inputs": [GOOD], "outputs": [{"name": "forecast"}]}, None, "outputs[0].name: 'forecast' is not one of the outputs of clf: probabilities, label_index, label"),
        ({"inputs": [GOOD], "outputs": [{"name": "label", "parameters": {"classification": 2}}]}, None, "classification extension is not supported"),
        ({"inputs": [GOOD], "outputs": [{"name": "label", "parameters": {"binary_data": "yes"}}]}, None, "label.parameters.binary_data: must be true or false"),
        ({"inputs": [GOOD], "parameters": {"sequence_id": 7, "sequence_start": True}}, None, "parameters.sequence_id: Triton's sequence batching is not supported; stream a sequence step by step over the /stream WebSocket"),
        ({"inputs": [GOOD], "id": 5}, None, "id: must be a string"),
        ({"inputs": [GOOD], "parameters": []}, None, "parameters: must be a JSON object"),
        ({"inputs": [{**GOOD, "parameters": {"binary_data_size": 24}}]}, BINARY_GOOD, "sequence: has both data and parameters.binary_data_size"),
        ({"inputs": [{**{k: v for k, v in GOOD.items() if k != "data"}, "parameters": {"binary_data_size": 48}}]}, BINARY_GOOD,
         "sequence: parameters.binary_data_size is 48 bytes but only 24 binary bytes are left in the body"),
        ({"inputs": [{**{k: v for k, v in GOOD.items() if k != "data"}, "parameters": {"binary_data_size": 20}}]}, BINARY_GOOD[:20],
         "sequence: binary_data_size is 20 bytes but shape [1, 2, 3] of FP32 needs 24"),
        ({"inputs": [{**{k: v for k, v in GOOD.items() if k != "data"}, "parameters": {"binary_data_size": -1}}]}, BINARY_GOOD,
         "sequence: parameters.binary_data_size must be a whole number of bytes, got -1"),
        ({"inputs": [{**{k: v for k, v in GOOD.items() if k != "data"}, "parameters": {"binary_data_size": 24}}]}, BINARY_GOOD + b"1234",
         "body: 4 binary bytes after the JSON header belong to no input"),
    ],
)
def test_malformed_requests_are_refused_naming_the_input_and_problem(request_json, binary, message):
    assert message in refused(*raw(request_json, binary))


@pytest.mark.parametrize("data", [[1, 2, 3, 4, 5, 2**64], [0.5, 2, 3, 4, 5, 2**64]])
def test_a_whole_number_past_64_bits_is_read_as_fp32_like_any_number(data):
    request = decode(*raw({"inputs": [{**GOOD, "data": data}]}))
    assert request.values[0, 1, 2] == np.float32(2**64) and request.values[0, 0, 1] == 2


def test_non_finite_binary_values_are_refused_with_their_position():
    values = np.zeros((2, 3, 3), np.float32)
    values[1, 2, 0] = np.inf
    assert refused(*request_body([tensor("sequence", values, True)])) == "sequence[1]: step 2, feature 0 is not a finite 32-bit number"


@pytest.mark.parametrize(
    "body, header_length, message",
    [
        (b'{"inputs": [', None, "body: is not valid JSON"),
        (b'[1, 2]', None, "body: must be a JSON object"),
        (b'\xff\xfe', None, "body: is not valid JSON"),
        (b'\x1f\x8b\x08\x00\xf5', None, "body: is not valid JSON (not UTF-8 text); a body with binary tensors gives the "
                                    "length of its JSON part in the Inference-Header-Content-Length header"),
        (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "body: is not valid JSON (nested too deeply)"),
        (b'{"inputs": [{"name": "sequence", "datatype": "FP32", "shape": [1, 1, 3], "data": [NaN, 1, 2]}]}', None,
         "sequence[0]: step 0, feature 0 is not a finite 32-bit number"),
        (b'{"inputs": []}', "twelve", "Inference-Header-Content-Length: must be a whole number of bytes, got 'twelve'"),
        (b'{"inputs": []}', "-3", "Inference-Header-Content-Length: must be a whole number of bytes"),
        (b'{"inputs": []}', "99", "Inference-Header-Content-Length: 99 is past the end of the 14-byte body"),
    ],
)
def test_unreadable_bodies_and_header_lengths_are_refused(body, header_length, message):
    assert message in refused(body, header_length)


def test_a_json_part_over_the_json_cap_is_refused_with_413_before_parsing():
    body = b" " * 2000 + b"{}"
    with pytest.raises(ProtocolError) as caught:
        read_infer_request(body, str(len(body)), CLASSIFIER, max_json_bytes=1000)
    assert caught.value.status == 413 and "send the tensors as binary data" in str(caught.value)


def test_a_huge_binary_data_size_is_refused_before_any_data_is_read():
    huge = {"name": "sequence", "datatype": "FP32", "shape": [8, 50, 3], "parameters": {"binary_data_size": 10**15}}
    message = refused(*raw({"inputs": [huge]}, b"x"))
    assert message == "sequence: parameters.binary_data_size is 1000000000000000 bytes but only 1 binary bytes are left in the body"
