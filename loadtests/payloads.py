"""Request bodies built from ``GET /models``, and checks of the answers; plain functions, no locust.

The locustfile sends what these build and fails every response these reject, so a load test finds wrong
answers as well as slow ones. Kept apart from the locustfile so tests can import them without gevent.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np

# /models reports the service's length cap (4096 by default), far above what anyone sends; when it also
# reports the longest training sequence, classifier requests go up to twice that, else up to this.
DEFAULT_CLASSIFY_STEPS = 100
PROBABILITY_TOLERANCE = 1e-4


def served(models: list[dict], task: str, wanted: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """The ``/models`` entries of ``task``, only those in ``wanted`` (names or tags) when given."""
    entries = [m for m in models if m["task"] == task]
    if wanted:
        entries = [m for m in entries if m["tag"] in wanted or m["tag"].split(":")[0] in wanted]
    return entries


def name_of(entry: dict) -> str:
    return entry["tag"].split(":")[0]


def classify_instance(rng: np.random.Generator, entry: dict) -> dict:
    """One sequence of 1 .. cap steps, (steps, features), named to ``entry``'s model."""
    train_max = entry.get("train_max_length")
    cap = min(entry["max_length"], 2 * train_max if train_max else DEFAULT_CLASSIFY_STEPS)
    steps = int(rng.integers(1, cap + 1))
    sequence = rng.normal(size=(steps, len(entry["features"]))).round(4)
    return {"sequence": sequence.tolist(), "model": name_of(entry)}


def forecast_instance(rng: np.random.Generator, entry: dict) -> dict:
    """A random-walk history of lookback .. 3x lookback steps around a random level; flat when single-channel."""
    lookback = entry["lookback"]
    steps = int(rng.integers(lookback, min(3 * lookback, entry["max_length"]) + 1))
    n_features = len(entry["features"])
    level = rng.uniform(-100, 1000, size=n_features)
    history = (level + rng.normal(size=(steps, n_features)).cumsum(axis=0)).round(3)  # (steps, features)
    architecture = entry.get("architecture", {})
    if architecture.get("transform") == "log":  # it forecasts the log of its targets: they must be above 0
        k = architecture.get("n_targets", 1)
        history[:, :k] = np.abs(history[:, :k]) + 1.0
    return {"history": history[:, 0].tolist() if n_features == 1 else history.tolist(), "model": name_of(entry)}


INSTANCE = {"classify": classify_instance, "forecast": forecast_instance}


def request_body(rng: np.random.Generator, task: str, entries: list[dict], n_instances: int) -> tuple[dict, list[dict]]:
    """A body of ``n_instances`` instances, each for a model drawn from ``entries``, and each instance's entry."""
    asked = [entries[i] for i in rng.integers(0, len(entries), size=n_instances)]
    return {"instances": [INSTANCE[task](rng, entry) for entry in asked]}, asked


def bad_body(task: str, entry: dict) -> dict:
    """A request the service must refuse with a 400: its one instance has one feature too many per step."""
    width = len(entry["features"]) + 1
    steps = entry["lookback"] if task == "forecast" else 3
    field = "sequence" if task == "classify" else "history"
    return {"instances": [{field: [[0.5] * width] * steps, "model": name_of(entry)}]}


def never_raises(check):
    """``check``, returning the exception as the problem instead of raising it: an answer of the wrong shape or
    types (a string where a number belongs) must fail its request. An exception inside locust's catch_response
    marks the request neither failed nor passed, and a run of such answers passed its thresholds."""

    @functools.wraps(check)
    def checked(*args, **kwargs):
        try:
            return check(*args, **kwargs)
        except Exception as err:  # whatever the answer held: a malformed answer is a wrong one
            return f"answer cannot be checked ({type(err).__name__}: {err})"[:300]

    return checked


def _numbers(values, low: float = -math.inf, high: float = math.inf) -> bool:
    """Whether every one of ``values`` is a finite number (not a bool) within ``low`` .. ``high``."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high
               for v in values)


@never_raises
def check_answers(task: str, asked: list[dict], status: int, text: str) -> str | None:
    """Why the answer to a request is wrong, or None when it is right; ``asked`` is the entry per sent instance."""
    if status != 200:
        return f"HTTP {status}: {text[:200]}"
    try:
        answers = json.loads(text)
    except ValueError:
        return f"body is not JSON: {text[:200]}"
    if not isinstance(answers, list) or len(answers) != len(asked):
        return f"expected a list of {len(asked)} answers, got {text[:200]}"
    check = check_classification if task == "classify" else check_forecast
    for index, (answer, entry) in enumerate(zip(answers, asked)):
        if not isinstance(answer, dict):
            return f"answer {index} is not an object: {answer!r:.100}"
        tag = str(answer.get("model", ""))
        if tag.split(":")[0] != name_of(entry):
            return f"answer {index}: model is {tag!r}, asked {name_of(entry)!r}"
        problem = check(answer, entry)
        if problem:
            return f"answer {index}: {problem}"
    return None


def check_classification(answer: dict, entry: dict) -> str | None:
    probabilities = answer.get("probabilities") or {}
    if sorted(probabilities) != sorted(entry["labels"]):
        return f"probabilities are for {sorted(probabilities)}, the model's labels are {sorted(entry['labels'])}"
    if not _numbers(probabilities.values(), 0.0, 1.0):
        return f"probabilities are not all numbers from 0 to 1: {list(probabilities.values())!r:.200}"
    total = sum(probabilities.values())
    if abs(total - 1.0) > PROBABILITY_TOLERANCE:
        return f"probabilities sum to {total:.6f}, not 1"
    label = answer.get("label")
    if probabilities.get(label) != max(probabilities.values()):
        return f"label {label!r} is not the most probable class"
    index, labels = answer.get("label_index"), entry["labels"]
    if not isinstance(index, int) or not 0 <= index < len(labels) or labels[index] != label:
        return f"label_index {index} does not point at label {label!r}"
    return None


def _flat(values: list) -> list[float]:
    return [x for step in values for x in (step if isinstance(step, list) else [step])]


def check_forecast(answer: dict, entry: dict) -> str | None:
    horizon, forecast = entry["horizon"], answer.get("forecast") or []
    if answer.get("horizon") != horizon or len(forecast) != horizon:
        return f"horizon {answer.get('horizon')} with {len(forecast)} steps; the model forecasts {horizon}"
    quantiles = answer.get("quantiles") or {}
    if entry["quantiles"] and sorted(map(float, quantiles)) != sorted(entry["quantiles"]):
        return f"quantile levels {sorted(quantiles)}, the model has {entry['quantiles']}"
    for what, values in [("forecast", forecast)] + [(f"quantile {level}", quantiles[level]) for level in quantiles]:
        if len(values) != horizon or not _numbers(_flat(values)):
            return f"{what} is not {horizon} steps of finite numbers: {values!r:.200}"
    levels = sorted(quantiles, key=float)
    for low, high in zip(levels, levels[1:]):
        if any(a > b for a, b in zip(_flat(quantiles[low]), _flat(quantiles[high]))):
            return f"quantile {low} is above quantile {high}"
    if "0.5" in quantiles and quantiles["0.5"] != forecast:
        return "forecast differs from quantile 0.5"
    return None


# ---- streams ------------------------------------------------------------------------------------------

STREAM_RESTART_STEPS = 200  # a simulated device starts a new stream after this many steps


def streamable(models: list[dict], task: str = "classify", wanted: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """The ``/models`` entries of ``task`` that can stream (``/stream/<task>`` and the WebSocket)."""
    return [m for m in served(models, task, wanted) if m.get("streamable")]


def new_steps(rng: np.random.Generator, entry: dict, most: int = 4) -> list[list[float]]:
    """1 .. ``most`` new readings of every feature: what a device sends between two answers."""
    return rng.normal(size=(int(rng.integers(1, most + 1)), len(entry["features"]))).round(4).tolist()


@never_raises
def check_stream_answer(answer: dict, entry: dict, seen: int, token: bool) -> str | None:
    """Why one stream answer is wrong (model, steps seen, the classification, a token when asked), or None."""
    if not isinstance(answer, dict):
        return f"answer is not an object: {answer!r:.100}"
    if "error" in answer:
        return f"error: {str(answer['error'])[:200]}"
    if str(answer.get("model", "")).split(":")[0] != name_of(entry):
        return f"model is {answer.get('model')!r}, asked {name_of(entry)!r}"
    if answer.get("seen") != seen:
        return f"seen is {answer.get('seen')}, the stream has sent {seen} steps"
    if token and not isinstance(answer.get("state"), str):
        return "no state token in the answer"
    return check_classification(answer, entry)


class TokenStream:
    """One ``/stream/<task>`` stream as its client keeps it: the steps the server has answered and the token to send
    with the next ones. Steps count only once answered: a refused request (a 503 under load, a 400) left the
    server's stream where it was, so the next answer's ``seen`` does not include them."""

    def __init__(self, entry: dict):
        self.entry, self.sequence, self.state = entry, [], None

    def body(self, steps: list[list[float]]) -> dict:
        return {"instances": [{"steps": steps, "state": self.state, "model": name_of(self.entry)}]}

    def answered(self, steps: list[list[float]], answer: dict) -> str | None:
        """Why ``answer`` to ``steps`` is wrong, or None; a right one moves the stream on past them."""
        problem = check_stream_answer(answer, self.entry, len(self.sequence) + len(steps), token=True)
        if problem is None:
            self.sequence, self.state = self.sequence + steps, answer["state"]
        return problem


@never_raises
def bad_request_problem(status: int, text: str, expected: str, retry_after: str | None) -> str | None:
    """Why the answer to a request malformed on purpose is wrong, or None for a 400 whose message holds ``expected``.
    Under overload it may be shed before it is read: a 503 with Retry-After reads ``HTTP 503: …``, the prefix the
    soak counts apart from real failures, as the good requests' overloads are."""
    if status == 400 and expected in text:
        return None
    if status == 503 and retry_after:
        return f"HTTP 503: {text[:200]}"
    return f"expected a 400 naming {expected!r}, got HTTP {status}: {text[:200]}"


@never_raises
def same_probabilities(streamed: dict, whole: dict, tolerance: float = PROBABILITY_TOLERANCE) -> str | None:
    """Why a stream's answer differs from /classify on its whole sequence, or None."""
    worst = max(abs(streamed["probabilities"][k] - p) for k, p in whole["probabilities"].items())
    return None if worst <= tolerance else f"differs from /classify on the whole sequence by {worst:.2e}"


# ---- the Open Inference Protocol (KServe v2) ----------------------------------------------------------
# Bodies are encoded with numpy alone, as the protocol's binary tensor data extension lays them out: a
# JSON header, then each binary tensor's little-endian bytes in the order of its inputs, the header's
# length in Inference-Header-Content-Length. Answers are read back the same way.

V2_HEADER = "Inference-Header-Content-Length"
V2_INPUT = {"classify": "sequence", "forecast": "history"}
V2_DTYPES = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8"), "INT32": np.dtype("<i4")}


def v2_path(entry: dict) -> str:
    return f"/v2/models/{name_of(entry)}/infer"


def v2_instances(rng: np.random.Generator, entry: dict, n_instances: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_instances`` instances drawn as /classify's and /forecast's are: values (N, T, F) float32, each
    instance its first ``lengths[i]`` steps and zeros after, and lengths (N,) int64."""
    field = V2_INPUT[entry["task"]]
    drawn = [np.asarray(INSTANCE[entry["task"]](rng, entry)[field], np.float32) for _ in range(n_instances)]
    lengths = np.array([len(x) for x in drawn], np.int64)
    values = np.zeros((n_instances, int(lengths.max()), len(entry["features"])), np.float32)
    for i, x in enumerate(drawn):
        values[i, : len(x)] = x.reshape(len(x), -1)
    return values, lengths


def v2_body(task: str, values: np.ndarray, lengths: np.ndarray, binary: bool = True) -> tuple[bytes, dict[str, str]]:
    """An infer request for ``values`` (N, T, F) and ``lengths`` (N,), and its headers: binary tensors in and
    out (``values`` sent as float32), or JSON both ways (``values`` written as they are: float64 rounded to a
    few decimals stays as short as /classify's JSON)."""
    inputs = [
        {"name": V2_INPUT[task], "datatype": "FP32", "shape": list(values.shape)},
        {"name": "lengths", "datatype": "INT64", "shape": [len(lengths)]},
    ]
    if not binary:
        inputs[0]["data"], inputs[1]["data"] = values.ravel().tolist(), lengths.tolist()
        return json.dumps({"inputs": inputs}).encode(), {"Content-Type": "application/json"}
    tensors = [values.astype("<f4").tobytes(), lengths.astype("<i8").tobytes()]
    for tensor, raw in zip(inputs, tensors):
        tensor["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return b"".join([header, *tensors]), {"Content-Type": "application/octet-stream", V2_HEADER: str(len(header))}


def read_v2_answer(body: bytes, header_length: str | None) -> tuple[dict, dict[str, np.ndarray]]:
    """An infer answer's JSON header and its outputs by name, JSON or binary; ValueError when it cannot be read."""
    end = int(header_length) if header_length else len(body)
    head = json.loads(body[:end])
    outputs, offset = {}, end
    for tensor in head["outputs"]:
        shape, datatype = tensor["shape"], tensor["datatype"]
        size = tensor.get("parameters", {}).get("binary_data_size")
        if size is None:
            values = tensor["data"] if datatype == "BYTES" else np.asarray(tensor["data"], V2_DTYPES[datatype])
        else:
            raw, offset = body[offset : offset + size], offset + size
            values = _v2_strings(raw) if datatype == "BYTES" else np.frombuffer(raw, V2_DTYPES[datatype])
        outputs[tensor["name"]] = np.asarray(values, dtype=object if datatype == "BYTES" else None).reshape(shape)
    if offset != len(body):
        raise ValueError(f"{len(body) - offset} bytes after the outputs belong to none of them")
    return head, outputs


def _v2_strings(raw: bytes) -> list[str]:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes."""
    items, at = [], 0
    while at < len(raw):
        size = int.from_bytes(raw[at : at + 4], "little")
        items.append(raw[at + 4 : at + 4 + size].decode())
        at += 4 + size
    return items


def v2_as_answers(entry: dict, outputs: dict[str, np.ndarray]) -> list[dict]:
    """A v2 answer's outputs as /classify's or /forecast's answers, one per instance, to check them alike."""
    name = name_of(entry)
    if entry["task"] == "classify":
        probabilities, indices, labels = outputs["probabilities"], outputs["label_index"], outputs["label"]
        return [
            {"model": name, "probabilities": dict(zip(entry["labels"], p.tolist())), "label_index": int(i), "label": str(label)}
            for p, i, label in zip(probabilities, indices, labels)
        ]
    forecast = outputs["forecast"]  # (N, H, K)
    quantiles = outputs.get("quantiles")  # (N, Q, H, K)
    answers = []
    for i, steps in enumerate(forecast):
        answer = {"model": name, "horizon": len(steps), "forecast": steps.tolist()}
        if quantiles is not None:
            answer["quantiles"] = {str(q): quantiles[i, j].tolist() for j, q in enumerate(entry["quantiles"])}
        answers.append(answer)
    return answers


@never_raises
def check_v2_answer(entry: dict, n_instances: int, status: int, body: bytes, header_length: str | None) -> str | None:
    """Why an infer answer for ``n_instances`` instances of ``entry``'s model is wrong, or None when it is right."""
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    try:
        head, outputs = read_v2_answer(body, header_length)
    except (ValueError, KeyError, TypeError) as err:
        return f"answer cannot be read ({type(err).__name__}: {err}): {body[:200]!r}"
    if head.get("model_name") != name_of(entry):
        return f"model_name is {head.get('model_name')!r}, asked {name_of(entry)!r}"
    wanted = ["probabilities", "label_index", "label"] if entry["task"] == "classify" else ["forecast"]
    wanted += ["quantiles"] if entry["task"] == "forecast" and entry["quantiles"] else []
    if sorted(outputs) != sorted(wanted):
        return f"outputs are {sorted(outputs)}, expected {sorted(wanted)}"
    if any(len(array) != n_instances for array in outputs.values()):
        return f"expected {n_instances} instances in every output, got {({k: len(v) for k, v in outputs.items()})}"
    check = check_classification if entry["task"] == "classify" else check_forecast
    for index, answer in enumerate(v2_as_answers(entry, outputs)):
        problem = check(answer, entry)
        if problem:
            return f"instance {index}: {problem}"
    return None
