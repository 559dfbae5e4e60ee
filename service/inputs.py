"""One instance's input as float32 arrays, checked against the model that will read it.

Every check that needs the model (feature count, lookback, positive targets of a log forecaster)
happens here, before anything is queued, and a failure is an :class:`InstanceError` naming the
instance, the field and the problem. Shape and type were already checked at the edge
(``service.schemas``); the arrays made here go to a lane (``service.lanes``) unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.artifact import LoadedModel


class InstanceError(ValueError):
    """One instance is unusable; the message names the instance, the field and the problem (``index`` None: a
    field of the request itself, such as its ``model``)."""

    def __init__(self, index: int | None, field: str, problem: str):
        super().__init__(f"{field}: {problem}" if index is None else f"instances[{index}].{field}: {problem}")
        self.index, self.field, self.problem = index, field, problem


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for (configurable, see ``service.config``)."""

    max_instances: int = 256
    max_length: int = 4096


def sequence(index: int, values: list, model: LoadedModel, limits: Limits) -> np.ndarray:
    """One /classify instance's ``sequence`` as (T, F) float32."""
    return as_array(index, "sequence", values, model, limits.max_length)


def history_window(index: int, values: list, model: LoadedModel, limits: Limits) -> np.ndarray:
    """One /forecast instance's ``history`` as its last ``lookback`` steps, (lookback, C) float32."""
    return last_window(index, as_array(index, "history", values, model, limits.max_length), model)


def last_window(index: int, history: np.ndarray, model: LoadedModel) -> np.ndarray:
    """A (T, C) float32 ``history`` of finite values as its last ``lookback`` steps, (lookback, C)."""
    lookback = model.card.lookback
    if len(history) < lookback:
        raise InstanceError(index, "history", f"has {len(history)} steps but {model.tag} needs at least {lookback}")
    return positive_if_log(index, "history", history[-lookback:], model, first_step=len(history) - lookback)


def new_steps(index: int, values: list, model: LoadedModel, max_steps: int) -> np.ndarray:
    """A stream's new ``steps`` as (k, F) float32, at most ``max_steps`` of them (either task)."""
    return positive_if_log(index, "steps", as_array(index, "steps", values, model, max_steps), model)


def as_array(index: int, field: str, values: list, model: LoadedModel, max_length: int) -> np.ndarray:
    """``values`` as (T, F) float32: a flat list is one value per step, so only for single-feature models."""
    n_features, tag = len(model.card.features), model.tag
    if not values:
        raise InstanceError(index, field, "is empty; send at least one step")
    if len(values) > max_length:
        raise InstanceError(index, field, f"has {len(values)} steps; the limit is {max_length}")
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


def positive_if_log(index: int, field: str, array: np.ndarray, model: LoadedModel, first_step: int = 0) -> np.ndarray:
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
