"""The maths of serving, with no HTTP in sight: one object per task.

A task knows three things, each a method a reader can open:

* ``validate(index, values, model, limits)`` — one instance's input as a float32 array, or an
  :class:`InstanceError` naming the instance, the field and the problem (before anything is queued);
  ``prepare(index, array, model)`` is its last part, for input that is already an array (service.v2);
* ``cost(array)`` — the instance's work in steps, for the batcher's admission and scheduling;
* ``run_batch(model, arrays)`` — one forward pass over many instances (from many requests), one
  answer per instance, in order. An instance whose output is not finite (inputs far outside what the
  model was trained on can overflow float32) gets an :class:`OutOfRange` instead of an answer, so no
  NaN or infinity is ever sent as JSON and the instances beside it are not affected;
* ``step_batch(model, stream, steps)`` — the same for streams: advance many streams' states by their
  new steps together (:mod:`models.streaming`), one :class:`Stepped` per :class:`StreamStep`;
* ``answer(model, output)`` — one model output as the JSON answer (both paths use it).

One request's path: ``app.py`` (HTTP) -> ``schemas.py`` (pydantic) -> ``served.py`` (resolve the model,
``task.validate`` every instance) -> ``batching.py`` (merge concurrent instances) -> ``task.run_batch``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.artifact import LoadedModel
from models.padding import pad_sequences
from models.streaming import Advanced, ClassifierStream, ForecasterStream, State


class InstanceError(ValueError):
    """One instance is unusable; the message names the instance, the field and the problem."""

    def __init__(self, index: int, field: str, problem: str):
        super().__init__(f"instances[{index}].{field}: {problem}")
        self.index, self.field, self.problem = index, field, problem


class OutOfRange(ValueError):
    """The model's output for one instance is not finite: its values are too large for the model."""


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for (configurable, see ``service.config``)."""

    max_instances: int = 256
    max_length: int = 4096


def _as_array(index: int, field: str, values: list, n_features: int, tag: str, limits: Limits) -> np.ndarray:
    """``values`` as (T, F) float32: a flat list is one value per step, so only for single-feature models."""
    if not values:
        raise InstanceError(index, field, "is empty; send at least one step")
    if len(values) > limits.max_length:
        raise InstanceError(index, field, f"has {len(values)} steps; the limit is {limits.max_length}")
    nested = isinstance(values[0], list)
    if any(isinstance(step, list) != nested for step in values):
        raise InstanceError(index, field, "mixes numbers and lists; send one list per step, or (one feature) a flat list of numbers")
    if not nested:
        if n_features != 1:
            raise InstanceError(
                index, field, f"got a flat list but {tag} expects {n_features} features per step: send [[f1, …, f{n_features}], …]"
            )
        with np.errstate(over="ignore"):
            array = np.asarray(values, dtype=np.float32)[:, None]
    else:
        if any(len(step) != n_features for step in values):
            bad = next(t for t, step in enumerate(values) if len(step) != n_features)
            raise InstanceError(index, field, f"step {bad} has {len(values[bad])} features but {tag} expects {n_features}")
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused just below
            array = np.asarray(values, dtype=np.float32)
    if not np.isfinite(array).all():
        step, feature = np.argwhere(~np.isfinite(array))[0]
        raise InstanceError(index, field, f"step {step}, feature {feature} is not a finite 32-bit number")
    return array


def validate_steps(index: int, steps: list, model: LoadedModel, max_steps: int) -> np.ndarray:
    """A stream's new steps as (k, F) float32, at most ``max_steps`` of them (either task)."""
    array = _as_array(index, "steps", steps, len(model.card.features), model.tag, Limits(max_length=max_steps))
    return _positive_if_log(index, "steps", array, model)


def _positive_if_log(index: int, field: str, array: np.ndarray, model: LoadedModel, first_step: int = 0) -> np.ndarray:
    """``array`` (T, C) (steps ``first_step`` on of the field), unless ``model`` forecasts the log of its
    targets and one of them is not above 0."""
    if getattr(model.module, "transform", "none") != "log":
        return array
    k = model.module.n_targets
    bad = np.argwhere(array[:, :k] <= 0)
    if len(bad):
        step, feature = bad[0]
        raise InstanceError(index, field, f"step {first_step + step}, feature {feature} is {array[step, feature]:g}, but {model.tag} "
                                          f"forecasts the logarithm of its targets and needs them above 0")
    return array


@dataclass
class StreamStep:
    """One stream's work for a stream batch: its state, its new steps (k, F) and whether to answer every step."""

    state: State
    steps: np.ndarray
    every_step: bool = False


@dataclass
class Stepped:
    """A stream after its new steps: its new state and its answers (the last step's, or every step's), in order."""

    state: State
    answers: list[dict[str, Any]]


def stream_cost(item: StreamStep) -> int:
    """A stream item's work for the batcher: its new steps (each one a pass over the batch of streams)."""
    return len(item.steps)


def _out_of_range(model: LoadedModel) -> OutOfRange:
    return OutOfRange(
        f"the values are too large for {model.tag}: its output overflowed 32-bit floats "
        "(inputs far outside the range it was trained on); rescale them"
    )


class ClassifyTask:
    """Many-to-one classification: a (T, F) sequence in, a label and class probabilities out."""

    name = "classify"
    field = "sequence"

    def validate(self, index: int, sequence: list, model: LoadedModel, limits: Limits) -> np.ndarray:
        """One /classify instance as (T, F) float32."""
        return self.prepare(index, _as_array(index, self.field, sequence, len(model.card.features), model.tag, limits), model)

    def prepare(self, index: int, sequence: np.ndarray, model: LoadedModel) -> np.ndarray:
        """A (T, F) float32 sequence already checked for its shape and values: the whole of it is read."""
        return sequence

    def cost(self, sequence: np.ndarray) -> int:
        return len(sequence)

    @torch.inference_mode()
    def run_batch(self, model: LoadedModel, sequences: list[np.ndarray]) -> list[dict[str, Any] | OutOfRange]:
        """One forward pass over sequences of any lengths; one answer per sequence, in order."""
        x, lengths = pad_sequences(sequences)  # (B, T, F), (B,)
        logits = model.module(x.to(model.device, non_blocking=True), lengths)  # (B, C)
        return self.answers(model, logits.float().cpu().numpy())

    def step_batch(self, model: LoadedModel, stream: ClassifierStream, items: list[StreamStep]) -> list[Stepped | OutOfRange]:
        """Advance many streams by their new steps together; each answer equals /classify on its sequence so far."""
        advanced = stream.advance([i.state for i in items], [i.steps for i in items], [i.every_step for i in items])
        logits = [row for a in advanced for _, row in a.outputs]
        answers = iter(self.answers(model, np.stack(logits)) if logits else [])  # one softmax for the whole pass
        return [_stepped(model, a, [(n, next(answers)) for n, _ in a.outputs]) for a in advanced]

    def answers(self, model: LoadedModel, logits: np.ndarray) -> list[dict[str, Any] | OutOfRange]:
        """Many sequences' logits (B, C) as their answers, one softmax for all (per row it cost more than the
        forward pass of a small model); a row whose probabilities are not finite gets OutOfRange."""
        with np.errstate(all="ignore"):  # inf - inf is NaN: that row is refused just below
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities = shifted / shifted.sum(axis=1, keepdims=True)  # (B, C) softmax
        finite = np.isfinite(probabilities).all(axis=1).tolist()
        best = probabilities.argmax(axis=1).tolist()
        labels, tag = model.card.labels, model.tag
        return [
            {"model": tag, "label": labels[k], "label_index": k, "probabilities": dict(zip(labels, row))} if ok
            else _out_of_range(model)
            for row, k, ok in zip(probabilities.tolist(), best, finite)
        ]


class ForecastTask:
    """Direct multi-horizon forecasting: the last ``lookback`` steps in, the next ``horizon`` out."""

    name = "forecast"
    field = "history"

    def validate(self, index: int, history: list, model: LoadedModel, limits: Limits) -> np.ndarray:
        """One /forecast instance as its last ``lookback`` steps, (lookback, C) float32."""
        return self.prepare(index, _as_array(index, self.field, history, len(model.card.features), model.tag, limits), model)

    def prepare(self, index: int, array: np.ndarray, model: LoadedModel) -> np.ndarray:
        """A (T, C) float32 history already checked for its shape and values, as its last ``lookback`` steps."""
        lookback = model.card.lookback
        if len(array) < lookback:
            raise InstanceError(index, self.field, f"has {len(array)} steps but {model.tag} needs at least {lookback}")
        return _positive_if_log(index, self.field, array[-lookback:], model, first_step=len(array) - lookback)

    def cost(self, window: np.ndarray) -> int:
        return len(window)

    @torch.inference_mode()
    def run_batch(self, model: LoadedModel, windows: list[np.ndarray]) -> list[dict[str, Any] | OutOfRange]:
        """One forward pass over equal-length windows; forecasts in each history's own scale."""
        x = torch.from_numpy(np.stack(windows))  # (B, lookback, C)
        out = model.module(x.to(model.device, non_blocking=True)).cpu().numpy()  # (B, H, K, Q)
        return [self.answer(model, row) for row in out]

    def step_batch(self, model: LoadedModel, stream: ForecasterStream, items: list[StreamStep]) -> list[Stepped | OutOfRange]:
        """Advance many streams by their new steps; each forecast equals /forecast on the history so far.

        A step before the stream has ``lookback`` steps gets ``"forecast": null`` and how many steps it
        still needs, where /forecast would refuse the history as too short.
        """
        advanced = stream.advance([i.state for i in items], [i.steps for i in items], [i.every_step for i in items])
        lookback, out = model.card.lookback, []
        for item, a in zip(items, advanced):
            seen = int(a.state["steps"][0])
            asked = range(seen - len(item.steps) + 1, seen + 1) if item.every_step else [seen]
            ready = dict(a.outputs)
            answers = [
                (n, self.answer(model, ready[n])) if n in ready
                else (n, {"model": model.tag, "horizon": model.card.horizon, "forecast": None, "steps_needed": lookback - n})
                for n in asked
            ]
            out.append(_stepped(model, a, answers))
        return out

    def answer(self, model: LoadedModel, out: np.ndarray) -> dict[str, Any] | OutOfRange:
        """One window's output (H, K, Q) as its forecast, the quantiles beside it."""
        if not np.isfinite(out).all():
            return _out_of_range(model)
        card, point = model.card, model.module.point_index

        def series(values: np.ndarray) -> list:  # (H, K) -> [h…] for one target, [[k…], …] for several
            return values[:, 0].tolist() if len(card.targets) == 1 else values.tolist()

        answer: dict[str, Any] = {"model": model.tag, "horizon": card.horizon, "forecast": series(out[..., point])}
        if card.quantiles:
            answer["quantiles"] = {str(q): series(out[..., i]) for i, q in enumerate(card.quantiles)}
        return answer


# Answers hold only plain lists and dicts of finite numbers (checked above), so they are written as JSON
# directly, by one encoder (json.dumps with options builds a new one per call): HTTP answers and stream messages.
answer_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _stepped(model: LoadedModel, advanced: Advanced, answers: list[tuple[int, dict[str, Any] | OutOfRange]]) -> Stepped | OutOfRange:
    """A stream's answers, each with ``seen`` (its steps so far); OutOfRange when any of them is one."""
    for _, answer in answers:
        if isinstance(answer, OutOfRange):
            return answer
    return Stepped(advanced.state, [{**answer, "seen": n} for n, answer in answers])


CLASSIFY = ClassifyTask()
FORECAST = ForecastTask()
TASKS: dict[str, ClassifyTask | ForecastTask] = {CLASSIFY.name: CLASSIFY, FORECAST.name: FORECAST}  # by the card's task
