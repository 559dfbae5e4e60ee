"""The maths of serving, with no HTTP in sight: check one instance, run one batch, shape the answers.

One request's path: ``app.py`` (HTTP) -> ``schemas.py`` (pydantic) -> :func:`check_classify` /
:func:`check_forecast` (per instance, before anything is merged) -> the batcher merges instances from
concurrent requests -> :func:`classify_batch` / :func:`forecast_batch` (one forward pass) -> answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.artifact import LoadedModel
from models.padding import pad_sequences


class InstanceError(ValueError):
    """One instance is unusable; the message names the instance, the field and the problem."""

    def __init__(self, index: int, field: str, problem: str):
        super().__init__(f"instances[{index}].{field}: {problem}")
        self.index, self.field, self.problem = index, field, problem


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for (configurable, see ``service.config``)."""

    max_instances: int = 256
    max_length: int = 4096


def _as_array(index: int, field: str, values: list, n_features: int, tag: str) -> np.ndarray:
    """``values`` as (T, F) float32: a flat list is one value per step, so only for single-feature models."""
    if not values:
        raise InstanceError(index, field, "is empty; send at least one step")
    if not isinstance(values[0], list):
        if n_features != 1:
            raise InstanceError(
                index, field, f"got a flat list but {tag} expects {n_features} features per step: send [[f1, …, f{n_features}], …]"
            )
        with np.errstate(over="ignore"):
            array = np.asarray(values, dtype=np.float32)[:, None]
    else:
        widths = {len(step) for step in values}
        if widths != {n_features}:
            bad = next(t for t, step in enumerate(values) if len(step) != n_features)
            raise InstanceError(
                index, field, f"step {bad} has {len(values[bad])} features but {tag} expects {n_features}"
            )
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused just below
            array = np.asarray(values, dtype=np.float32)
    if not np.isfinite(array).all():
        step, feature = np.argwhere(~np.isfinite(array))[0]
        raise InstanceError(index, field, f"step {step}, feature {feature} is not a finite 32-bit number")
    return array


def check_classify(index: int, sequence: list, model: LoadedModel, limits: Limits) -> np.ndarray:
    """Validate one /classify instance and return it as (T, F) float32."""
    if len(sequence) > limits.max_length:
        raise InstanceError(index, "sequence", f"has {len(sequence)} steps; the limit is {limits.max_length}")
    return _as_array(index, "sequence", sequence, len(model.card.features), model.tag)


def check_forecast(index: int, history: list, model: LoadedModel, limits: Limits) -> np.ndarray:
    """Validate one /forecast instance and return its last ``lookback`` steps as (lookback, C) float32."""
    lookback = model.card.lookback
    if len(history) > limits.max_length:
        raise InstanceError(index, "history", f"has {len(history)} steps; the limit is {limits.max_length}")
    array = _as_array(index, "history", history, len(model.card.features), model.tag)
    if len(array) < lookback:
        raise InstanceError(index, "history", f"has {len(array)} steps but {model.tag} needs at least {lookback}")
    return array[-lookback:]


@torch.inference_mode()
def classify_batch(model: LoadedModel, sequences: list[np.ndarray]) -> list[dict[str, Any]]:
    """One forward pass over sequences of any lengths; one answer per sequence, in order."""
    x, lengths = pad_sequences(sequences)  # (B, T, F), (B,)
    logits = model.module(x.to(model.device, non_blocking=True), lengths)  # (B, C)
    probabilities = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    labels = model.card.labels
    answers = []
    for row in probabilities:
        k = int(row.argmax())
        answers.append(
            {
                "model": model.tag,
                "label": labels[k],
                "label_index": k,
                "probabilities": dict(zip(labels, row.tolist())),
            }
        )
    return answers


@torch.inference_mode()
def forecast_batch(model: LoadedModel, histories: list[np.ndarray]) -> list[dict[str, Any]]:
    """One forward pass over equal-length histories; forecasts in each history's own scale."""
    x = torch.from_numpy(np.stack(histories))  # (B, lookback, C)
    out = model.module(x.to(model.device, non_blocking=True)).cpu().numpy()  # (B, H, K, Q)
    card, point = model.card, model.module.point_index
    single_target = len(card.targets) == 1

    def series(values: np.ndarray) -> list:  # (H, K) -> [h…] for one target, [[k…], …] for several
        return values[:, 0].tolist() if single_target else values.tolist()

    answers = []
    for row in out:
        answer: dict[str, Any] = {"model": model.tag, "horizon": card.horizon, "forecast": series(row[..., point])}
        if card.quantiles:
            answer["quantiles"] = {str(q): series(row[..., i]) for i, q in enumerate(card.quantiles)}
        answers.append(answer)
    return answers
