"""Request bodies built from ``GET /models``, and checks of the answers; plain functions, no locust.

The locustfile sends what these build and fails every response these reject, so a load test finds wrong
answers as well as slow ones. Kept apart from the locustfile so tests can import them without gevent.
"""

from __future__ import annotations

import json

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


def same_probabilities(streamed: dict, whole: dict, tolerance: float = PROBABILITY_TOLERANCE) -> str | None:
    """Why a stream's answer differs from /classify on its whole sequence, or None."""
    worst = max(abs(streamed["probabilities"][k] - p) for k, p in whole["probabilities"].items())
    return None if worst <= tolerance else f"differs from /classify on the whole sequence by {worst:.2e}"
