"""The maths of serving, with no HTTP and no JSON in sight: batches of arrays in, arrays out.

One object per kind of forward pass, each bound to one loaded model and handed to that model's
:class:`~service.batching.MicroBatcher` as its work (``cost(item)`` and ``run_batch(items)``):

* :class:`ClassifyPass`: (T, F) sequences of any lengths in, class probabilities (C,) out;
* :class:`ForecastPass`: (lookback, C) windows in, forecasts (H, K, Q) in each history's own scale out;
* :class:`StreamPass`: many streams' states advanced by their new steps together
  (:mod:`models.streaming`); each output equals the whole-sequence pass on the stream so far.

An instance whose output is not finite (inputs far outside what the model was trained on can
overflow float32) gets an :class:`OutOfRange` instead of an output, so no NaN or infinity ever
leaves the server and the instances beside it are not affected. The lanes (``service.lanes``) turn
outputs into JSON answers; other front doors can read the arrays as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.artifact import LoadedModel
from models.padding import pad_sequences
from models.streaming import ClassifierStream, ForecasterStream, State


class OutOfRange(ValueError):
    """The model's output for one instance is not finite: its values are too large for the model."""


@dataclass
class StreamStep:
    """One stream's work for a stream batch: its state, its new steps (k, F) and whether to answer every step."""

    state: State
    steps: np.ndarray
    every_step: bool = False


@dataclass
class Stepped:
    """A stream after its new steps: its new state and its outputs, each paired with the stream's step count
    then (the last step's only, or every step's). A forecaster has no output before ``lookback`` steps."""

    state: State
    outputs: list[tuple[int, np.ndarray]]


def _out_of_range(model: LoadedModel) -> OutOfRange:
    return OutOfRange(
        f"the values are too large for {model.tag}: its output overflowed 32-bit floats "
        "(inputs far outside the range it was trained on); rescale them"
    )


class ForwardPass:
    """A model's forward pass over a batch of whole inputs (sequences or windows), as a batcher's work."""

    def __init__(self, model: LoadedModel):
        self.model = model

    def cost(self, array: np.ndarray) -> int:
        """The instance's work in steps (its length), for the batcher's admission and scheduling."""
        return len(array)


class ClassifyPass(ForwardPass):
    """Many-to-one classification over a batch: (T, F) sequences in, class probabilities (C,) out."""

    @torch.inference_mode()
    def run_batch(self, sequences: list[np.ndarray]) -> list[np.ndarray | OutOfRange]:
        """One forward pass over sequences of any lengths; one output per sequence, in order."""
        x, lengths = pad_sequences(sequences)  # (B, T, F), (B,)
        logits = self.model.module(x.to(self.model.device, non_blocking=True), lengths)  # (B, C)
        return self.outputs(logits.float().cpu().numpy())

    def outputs(self, logits: np.ndarray) -> list[np.ndarray | OutOfRange]:
        """Logits (B, C) as probabilities (C,) per row, one softmax for all (per row it cost more than the
        forward pass of a small model); a row whose probabilities are not finite gets OutOfRange."""
        with np.errstate(all="ignore"):  # inf - inf is NaN: that row is refused just below
            shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities = shifted / shifted.sum(axis=1, keepdims=True)  # (B, C) softmax
        finite = np.isfinite(probabilities).all(axis=1)
        return [row if ok else _out_of_range(self.model) for row, ok in zip(probabilities, finite)]


class ForecastPass(ForwardPass):
    """Direct multi-horizon forecasting over a batch: (lookback, C) windows in, (H, K, Q) forecasts out."""

    @torch.inference_mode()
    def run_batch(self, windows: list[np.ndarray]) -> list[np.ndarray | OutOfRange]:
        """One forward pass over equal-length windows; forecasts in each history's own scale."""
        x = torch.from_numpy(np.stack(windows))  # (B, lookback, C)
        return self.outputs(self.model.module(x.to(self.model.device, non_blocking=True)).cpu().numpy())  # (B, H, K, Q)

    def outputs(self, forecasts: np.ndarray) -> list[np.ndarray | OutOfRange]:
        """Forecasts (B, H, K, Q) as one (H, K, Q) per row; a row that is not finite gets OutOfRange."""
        finite = np.isfinite(forecasts.reshape(len(forecasts), -1)).all(axis=1)
        return [row if ok else _out_of_range(self.model) for row, ok in zip(forecasts, finite)]


class StreamPass:
    """Many streams of one model advanced by their new steps together, one step per pass.

    ``forward`` is the model's whole-sequence pass: its ``outputs`` turns the streams' raw outputs into
    the same outputs the whole sequence gets (one softmax for the whole pass, for a classifier).
    """

    def __init__(self, forward: ClassifyPass | ForecastPass, stream: ClassifierStream | ForecasterStream):
        self.forward = forward
        self.stream = stream

    def cost(self, item: StreamStep) -> int:
        """A stream item's work: its new steps (each one a pass over the batch of streams)."""
        return len(item.steps)

    def run_batch(self, items: list[StreamStep]) -> list[Stepped | OutOfRange]:
        """Advance every item's stream; one Stepped per item, or OutOfRange when any of its outputs is."""
        advanced = self.stream.advance([i.state for i in items], [i.steps for i in items], [i.every_step for i in items])
        raw = [row for a in advanced for _, row in a.outputs]
        outputs = iter(self.forward.outputs(np.stack(raw)) if raw else [])
        results: list[Stepped | OutOfRange] = []
        for a in advanced:
            mine = [(n, next(outputs)) for n, _ in a.outputs]
            refused = next((out for _, out in mine if isinstance(out, OutOfRange)), None)
            results.append(refused or Stepped(a.state, mine))
        return results
