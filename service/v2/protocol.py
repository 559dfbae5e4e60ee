"""A seqserve model in the Open Inference Protocol: its metadata, its infer requests and its answers.

A classifier takes ``sequence`` FP32 ``[N, T, F]`` and answers ``probabilities`` FP32 ``[N, C]``,
``label_index`` INT64 ``[N]`` and ``label`` BYTES ``[N]``; a forecaster takes ``history`` FP32
``[N, T, F]`` (only its last ``lookback`` steps are read) and answers ``forecast`` FP32 ``[N, H, K]``
and, when it has quantiles, ``quantiles`` FP32 ``[N, Q, H, K]``. Both take an optional ``lengths``
INT32 or INT64 ``[N]``: instance ``i`` is its first ``lengths[i]`` steps, the rest is padding that is
never read (without it every instance is ``T`` steps long).

:func:`read_infer_request` turns a body into arrays checked against the model, or raises
:class:`ProtocolError` with the HTTP status our JSON API would give and a message naming the input and
the problem; :func:`write_infer_response` encodes the outputs, as JSON or binary as the request asked.
Nothing here serves HTTP (``service.v2.routes`` does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from service.v2 import HEADER_LENGTH
from service.v2.tensors import TYPES_KNOWN, TensorError, from_bytes, from_json_data, parse_shape, short, to_binary, to_json

EXTENSIONS = ["binary_tensor_data", "model_configuration"]
PLATFORM = "seqserve_pytorch"
SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")
LENGTHS = "lengths"


def config_type(datatype: str) -> str:
    """Triton's model-configuration name of a protocol datatype: ``TYPE_`` and the same name, except that
    ``BYTES`` is ``TYPE_STRING``."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


class ProtocolError(ValueError):
    """A request the protocol cannot answer: ``status`` (4xx) and a message naming the input and the problem."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as model metadata lists it: ``-1`` marks a dimension of any size."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        meta = {"name": self.name, "datatype": self.datatype, "shape": self.shape}
        return {**meta, "parameters": self.parameters} if self.parameters else meta

    def config(self) -> dict[str, Any]:
        """This tensor in Triton's model configuration: its whole shape as ``dims``."""
        config: dict[str, Any] = {"name": self.name, "data_type": config_type(self.datatype), "dims": self.shape}
        return {**config, "optional": True} if self.parameters.get("optional") else config


@dataclass(frozen=True)
class ModelInterface:
    """What the protocol needs to know of one served model, and the limits of one request."""

    name: str
    version: str
    task: str  # "classify" or "forecast"
    versions: list[str]  # every version of the name this server has loaded (live updates keep the newest few)
    features: list[str]
    max_instances: int
    max_length: int
    labels: list[str] = field(default_factory=list)  # classifiers
    targets: list[str] = field(default_factory=list)  # forecasters
    lookback: int = 0
    horizon: int = 0
    quantiles: list[float] = field(default_factory=list)

    @property
    def input_name(self) -> str:
        return "sequence" if self.task == "classify" else "history"

    def inputs(self) -> list[TensorSpec]:
        values = TensorSpec(self.input_name, "FP32", [-1, -1, len(self.features)], {"features": self.features})
        return [values, TensorSpec(LENGTHS, "INT64", [-1], {"optional": True, "datatypes": ["INT32", "INT64"]})]

    def outputs(self) -> list[TensorSpec]:
        if self.task == "classify":
            return [
                TensorSpec("probabilities", "FP32", [-1, len(self.labels)], {"labels": self.labels}),
                TensorSpec("label_index", "INT64", [-1]),
                TensorSpec("label", "BYTES", [-1]),
            ]
        k, h = len(self.targets), self.horizon
        outputs = [TensorSpec("forecast", "FP32", [-1, h, k], {"targets": self.targets})]
        if self.quantiles:
            outputs.append(TensorSpec("quantiles", "FP32", [-1, len(self.quantiles), h, k], {"quantile_levels": self.quantiles}))
        return outputs

    def metadata(self) -> dict[str, Any]:
        """``GET /v2/models/{name}[/versions/{version}]``."""
        parameters = {"task": self.task, "max_instances": self.max_instances, "max_length": self.max_length}
        if self.task == "forecast":
            parameters |= {"lookback": self.lookback, "horizon": self.horizon}
        return {
            "name": self.name, "versions": self.versions, "platform": PLATFORM,
            "inputs": [spec.metadata() for spec in self.inputs()],
            "outputs": [spec.metadata() for spec in self.outputs()],
            "parameters": parameters,
        }

    def config(self) -> dict[str, Any]:
        """``GET /v2/models/{name}[/versions/{version}]/config``: Triton's model configuration extension, which
        Triton's ``perf_analyzer`` reads before it sends a request.

        ``max_batch_size`` is 0, so ``dims`` are whole shapes, the metadata's: in Triton's terms, a positive
        one would make the first dimension an implied batch dimension left out of ``dims``, and ``lengths``
        ``[N]`` would have no dimension left (perf_analyzer refuses an input without one). seqserve still
        merges the instances of concurrent requests into shared forward passes.
        """
        return {
            "name": self.name, "platform": PLATFORM, "backend": "seqserve", "max_batch_size": 0,
            "input": [spec.config() for spec in self.inputs()],
            "output": [spec.config() for spec in self.outputs()],
        }


def server_metadata(version: str) -> dict[str, Any]:
    """``GET /v2``: the server's name, version and the protocol extensions it supports."""
    return {"name": "seqserve", "version": version, "extensions": EXTENSIONS}


@dataclass
class InferRequest:
    """One decoded infer request: ``values`` (N, T, F) float32, ``lengths`` (N,) int64, the outputs to send."""

    values: np.ndarray
    lengths: np.ndarray
    outputs: dict[str, bool]  # output name -> send as binary, in the order to send them
    id: str | None = None


def read_infer_request(body: bytes, header_length: str | None, model: ModelInterface, max_json_bytes: int) -> InferRequest:
    """Decode an infer request for ``model``: JSON alone, or a JSON header of ``header_length`` bytes and binary tensors.

    Raises ProtocolError: 413 when the JSON part is over ``max_json_bytes``, 400 for everything else.
    """
    raw = memoryview(body)
    json_end = _json_end(header_length, len(raw), max_json_bytes)
    request = _parse_json(raw[:json_end])
    parameters = _object(request.get("parameters", {}), "parameters")
    for name in SEQUENCE_PARAMETERS:
        if name in parameters:
            raise ProtocolError(
                f"parameters.{name}: Triton's sequence batching is not supported; stream a sequence step by step "
                "over the /stream WebSocket or /stream/classify and /stream/forecast (README, Streaming)"
            )
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(f"id: must be a string, got {short(request_id)}")
    tensors = _read_inputs(request.get("inputs"), raw[json_end:], model)
    values = tensors.get(model.input_name)
    if values is None:
        raise ProtocolError(f"inputs: {model.input_name} is missing; {model.name} takes {_described(model.inputs()[0])}")
    lengths = _checked_lengths(tensors.get(LENGTHS), values)
    _check_finite(model.input_name, values, lengths)
    binary_default = _flag(parameters, "binary_data_output", "parameters")
    return InferRequest(values, lengths, _read_outputs(request.get("outputs"), binary_default, model), request_id)


def write_infer_response(
    model: ModelInterface, request: InferRequest, outputs: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The answer to ``request``: its outputs (by name) in the order asked, JSON or binary, and the headers to send."""
    heads: list[dict[str, Any]] = []
    binary: list[bytes] = []
    datatypes = {spec.name: spec.datatype for spec in model.outputs()}
    for name, as_binary in request.outputs.items():
        if as_binary:
            head, raw = to_binary(name, datatypes[name], outputs[name])
            heads.append(head)
            binary.append(raw)
        else:
            heads.append(to_json(name, datatypes[name], outputs[name]))
    answer: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": heads}
    if request.id is not None:
        answer["id"] = request.id
    header = json.dumps(answer, separators=(",", ":"), allow_nan=False).encode()
    if not binary:
        return header, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return b"".join([header, *binary]), headers


def _json_end(header_length: str | None, body_length: int, max_json_bytes: int) -> int:
    """Where the JSON part of a body ends: all of it, or the binary extension's header says where."""
    if header_length is None:
        end = body_length
    elif not header_length.strip().isdigit():
        raise ProtocolError(f"Inference-Header-Content-Length: must be a whole number of bytes, got {short(header_length)}")
    else:
        end = int(header_length)
        if end > body_length:
            raise ProtocolError(f"Inference-Header-Content-Length: {end} is past the end of the {body_length}-byte body")
    if end > max_json_bytes:
        # JSON is parsed on the event loop; only binary tensors may use the larger cap of binary bodies.
        raise ProtocolError(
            f"body: its JSON part is {end / 2**20:.1f} MiB, over the limit of {max_json_bytes / 2**20:g} MiB "
            "(SEQSERVE_MAX_BODY_MB); send the tensors as binary data", status=413,
        )
    return end


def _parse_json(raw: memoryview) -> dict[str, Any]:
    # NaN and Infinity are read (tritonclient writes them for such values): padding may hold them, and
    # within an instance's length _check_finite refuses them with their position.
    try:
        request = json.loads(bytes(raw))
    except UnicodeDecodeError:
        raise ProtocolError(
            "body: is not valid JSON (not UTF-8 text); a body with binary tensors gives the length of its JSON "
            "part in the Inference-Header-Content-Length header") from None
    except ValueError as err:
        raise ProtocolError(f"body: is not valid JSON ({str(err)[:100]})") from None
    except RecursionError:
        raise ProtocolError("body: is not valid JSON (nested too deeply)") from None
    return _object(request, "body")


def _read_inputs(inputs: Any, binary: memoryview, model: ModelInterface) -> dict[str, np.ndarray]:
    """The request's input tensors by name, each checked against the model; binary ones taken in order from ``binary``."""
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError(f"inputs: must be a non-empty list of tensors; {model.name} takes {_described(model.inputs()[0])}")
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for name, tensor, parameters in _named(inputs, "inputs", [spec.name for spec in model.inputs()], model):
        if name in tensors:
            raise ProtocolError(f"{name}: sent twice")
        size = parameters.get("binary_data_size")
        try:
            datatype = _datatype(name, tensor.get("datatype"), name == LENGTHS)
            shape = parse_shape(tensor.get("shape"))
            _check_shape(name, shape, model)
            if size is None:
                if "data" not in tensor:
                    raise TensorError("has neither data nor parameters.binary_data_size")
                tensors[name] = from_json_data(tensor["data"], datatype, shape)
                continue
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise TensorError(f"parameters.binary_data_size must be a whole number of bytes, got {short(size)}")
            if "data" in tensor:
                raise TensorError("has both data and parameters.binary_data_size; send one")
            if offset + size > len(binary):
                raise TensorError(f"parameters.binary_data_size is {size} bytes but only {len(binary) - offset} "
                                  "binary bytes are left in the body")
            tensors[name] = from_bytes(binary[offset:offset + size], datatype, shape)
            offset += size
        except TensorError as err:
            raise ProtocolError(f"{name}: {err}") from None
    if offset != len(binary):
        raise ProtocolError(f"body: {len(binary) - offset} binary bytes after the JSON header belong to no input "
                            "(the sum of binary_data_size is less than the binary part)")
    return tensors


def _datatype(name: str, datatype: Any, is_lengths: bool) -> str:
    accepted = ("INT32", "INT64") if is_lengths else ("FP32",)
    if datatype in accepted:
        return datatype
    known = "" if datatype in TYPES_KNOWN else " (not a datatype of the protocol)"
    raise TensorError(f"datatype {short(datatype)}{known} is not accepted; send {' or '.join(accepted)}")


def _check_shape(name: str, shape: tuple[int, ...], model: ModelInterface) -> None:
    """Shapes are checked before data is read, so a huge declared shape costs nothing."""
    if name == LENGTHS:
        if len(shape) != 1:
            raise TensorError(f"shape {short(list(shape))} must be [N], one length per instance")
        return
    if len(shape) != 3:
        raise TensorError(f"shape {short(list(shape))} must be [N, T, F]: instances, steps, features")
    n, t, f = shape
    if f != len(model.features):
        raise TensorError(f"shape {short(list(shape))} has {f} features but {model.name} expects {len(model.features)}")
    if n == 0:
        raise TensorError("has no instances; send at least one")
    if n > model.max_instances:
        raise TensorError(f"has {n} instances; the limit is {model.max_instances} per request (SEQSERVE_MAX_INSTANCES)")
    if t == 0:
        raise TensorError("has 0 steps; send at least one")
    if t > model.max_length:
        raise TensorError(f"has {t} steps; the limit is {model.max_length} (SEQSERVE_MAX_LENGTH)")


def _checked_lengths(lengths: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    n, t, _ = values.shape
    if lengths is None:
        return np.full(n, t, dtype=np.int64)
    if len(lengths) != n:
        raise ProtocolError(f"{LENGTHS}: has {len(lengths)} values but there are {n} instances")
    outside = np.flatnonzero((lengths < 1) | (lengths > t))
    if len(outside):
        i = int(outside[0])
        raise ProtocolError(f"{LENGTHS}[{i}]: {int(lengths[i])} is not between 1 and {t}, the steps sent")
    return lengths.astype(np.int64)


def _check_finite(name: str, values: np.ndarray, lengths: np.ndarray) -> None:
    """Every value within its instance's length is a finite float32; padding may hold anything."""
    finite = np.isfinite(values)
    if finite.all():  # the common case: no mask of the padding to build
        return
    n, t, _ = values.shape
    inside = np.arange(t)[None, :] < lengths[:, None]  # (N, T)
    bad = ~finite & inside[:, :, None]  # (N, T, F)
    if bad.any():
        i, step, feature = np.argwhere(bad)[0]
        raise ProtocolError(f"{name}[{i}]: step {step}, feature {feature} is not a finite 32-bit number")


def _read_outputs(outputs: Any, binary_default: bool, model: ModelInterface) -> dict[str, bool]:
    """The outputs to send, in order, each with whether it goes as binary; all of them when none are asked for."""
    known = [spec.name for spec in model.outputs()]
    if outputs is None:
        return dict.fromkeys(known, binary_default)
    if not isinstance(outputs, list):
        raise ProtocolError(f"outputs: must be a list, got {short(outputs)}")
    chosen: dict[str, bool] = {}
    for name, _, parameters in _named(outputs, "outputs", known, model):
        if "classification" in parameters:
            raise ProtocolError(f"{name}.parameters.classification: the classification extension is not "
                                "supported; ask for probabilities, label_index and label")
        binary = parameters.get("binary_data")
        chosen[name] = binary_default if binary is None else _flag(parameters, "binary_data", f"{name}.parameters")
    return chosen or dict.fromkeys(known, binary_default)


def _named(entries: list, where: str, known: list[str], model: ModelInterface) -> Iterator[tuple[str, dict, dict]]:
    """Each tensor of ``entries`` (the request's inputs or outputs) as its name, itself and its parameters;
    its name must be one of ``known``."""
    for position, entry in enumerate(entries):
        entry = _object(entry, f"{where}[{position}]")
        name = entry.get("name")
        if name not in known:
            raise ProtocolError(f"{where}[{position}].name: {short(name)} is not one of the {where} of {model.name}: "
                                f"{', '.join(known)}")
        yield name, entry, _object(entry.get("parameters", {}), f"{name}.parameters")


def _flag(parameters: dict[str, Any], key: str, where: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise ProtocolError(f"{where}.{key}: must be true or false, got {short(value)}")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: must be a JSON object, got {short(value)}")
    return value


def _described(spec: TensorSpec) -> str:
    return f"{spec.name} {spec.datatype} {spec.shape}"

