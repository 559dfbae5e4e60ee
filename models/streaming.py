"""Streaming: advance a model by a few new steps from a small saved state instead of re-reading the history.

A recurrent network is a rolling memory, ``h_t = f(x_t, h_{t-1})``. :func:`stream_for` wraps a model in
an object that keeps everything the next step needs in a fixed-size *state* (a dict of named numpy
arrays, one stream, no batch dimension) and steps many streams at once:

* :class:`ClassifierStream` — a causal :class:`~models.recurrent.SequenceClassifier`. The state is what
  each stage needs from the past: running input moments (``instance_norm="running"``), the last inputs
  of the causal convolutions, the partial max-pool window, every layer's hidden (and LSTM cell) state,
  and the running sum of the top layer's outputs (the head reads their mean). A step costs the same
  after ten steps or ten million, and the logits after ``t`` steps equal the whole-sequence forward on
  those ``t`` steps (to float32 rounding).
* :class:`ForecasterStream` — a :class:`~models.recurrent.Forecaster` normalises every window by its
  own statistics, so no summary of the past can stand in for it: the state is the last ``lookback``
  steps, and a forecast runs the window (its cost set by the lookback, never growing with the stream). Before ``lookback`` steps have
  arrived there is no forecast, exactly as ``/forecast`` refuses a shorter history.

* :class:`NeighbourStream` — a :class:`~models.neighbours.DTWNearestNeighbour` reads a query one DTW row
  at a time; the state is the last row against every reference (N x L float64), and the logits after
  ``t`` steps equal the whole-sequence forward on those ``t`` steps exactly (the same row function).

Models that cannot stream raise :class:`NotStreamable` with the reason: a bidirectional classifier
(its backward pass reads every step again with each new one) and one with ``instance_norm="sequence"``
(each new step changes the statistics every earlier step was standardised with), and an ensemble of
networks (a stream steps one network).
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.ensemble import ClassifierEnsemble
from models.neighbours import DTWNearestNeighbour, dtw_row
from models.normalization import running_step
from models.recurrent import Forecaster, SequenceClassifier


class NotStreamable(ValueError):
    """This model cannot be advanced step by step; the message says why."""


@dataclass(frozen=True)
class StateField:
    """One named array of a stream's state: its shape for one stream, its dtype and its starting value."""

    name: str
    shape: tuple[int, ...]
    dtype: type = np.float32
    start: float = 0.0

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


State = dict[str, np.ndarray]


def pack_state(state: State, fields: list[StateField]) -> bytes:
    """The state's arrays as raw little-endian bytes, in ``fields`` order (a fixed size per model)."""
    return b"".join(np.ascontiguousarray(state[f.name], dtype=np.dtype(f.dtype).newbyteorder("<")).tobytes() for f in fields)


def unpack_state(raw: bytes, fields: list[StateField]) -> State:
    """The inverse of :func:`pack_state`; ValueError when ``raw`` is not exactly one state's size."""
    expected = sum(f.nbytes for f in fields)
    if len(raw) != expected:
        raise ValueError(f"a state holds {expected} bytes, got {len(raw)}")
    state, offset = {}, 0
    for f in fields:
        array = np.frombuffer(raw, dtype=np.dtype(f.dtype).newbyteorder("<"), count=int(np.prod(f.shape)), offset=offset)
        state[f.name] = array.reshape(f.shape).astype(f.dtype)  # a writable copy in native order
        offset += f.nbytes
    return state


def not_streamable_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot stream, or None when it can."""
    if isinstance(module, Forecaster):
        return None  # the state is the last `lookback` steps: any forecaster, one-way or not
    if isinstance(module, DTWNearestNeighbour):
        return None  # the state is the last DTW row against every reference
    if isinstance(module, ClassifierEnsemble):
        return (f"it is an ensemble of {len(module.members)} networks, and a stream steps one network; "
                "train it with --family network to stream")
    if not isinstance(module, SequenceClassifier):
        return f"{type(module).__name__} has no streaming step"
    blockers = []  # (why, the training flag that lifts it): every one, so that one retraining is enough
    if module.encoder.directions == 2:
        blockers.append(("it is bidirectional: its backward pass reads the whole sequence again with every new step",
                         "--no-bidirectional"))
    if getattr(module.encoder.rnn, "proj_size", 0):
        blockers.append(("its LSTM projects its hidden state (proj_size), which the streaming step does not do", ""))
    if module.instance_norm == "sequence":
        blockers.append(("it standardises each sequence by the statistics of all its steps, which every new step "
                         "changes", "--instance-norm running"))
    if not blockers:
        return None
    flags = " ".join(flag for _, flag in blockers if flag)
    return "; and ".join(why for why, _ in blockers) + (f"; train it with {flags} to stream" if flags else "")


def stream_for(module: nn.Module, lookback: int | None = None) -> "ClassifierStream | ForecasterStream | NeighbourStream":
    """The streaming wrapper for ``module`` (a forecaster needs its ``lookback``); NotStreamable says why not."""
    reason = not_streamable_reason(module)
    if reason:
        raise NotStreamable(reason)
    if isinstance(module, Forecaster):
        if not lookback:
            raise ValueError("a forecaster streams over its lookback window; pass lookback")
        return ForecasterStream(module, lookback)
    if isinstance(module, DTWNearestNeighbour):
        return NeighbourStream(module)
    return ClassifierStream(module)


@dataclass
class Advanced:
    """What one stream got from :meth:`advance`: its new state and the outputs it asked for.

    ``outputs`` pairs the stream's step count after a step (1 for its first step ever) with the model's
    output then: logits ``(C,)`` for a classifier, ``(H, K, Q)`` for a forecaster. Only the last new
    step unless the caller asked for every step; a forecaster has none until ``lookback`` steps arrived.
    """

    state: State
    outputs: list[tuple[int, np.ndarray]]


class ClassifierStream:
    """Steps a causal :class:`SequenceClassifier`, many streams at once (see the module docstring)."""

    LOGIT_FIELDS = ("steps", "hidden", "out_sum")  # what :meth:`logits` reads from a state

    def __init__(self, module: SequenceClassifier):
        self.module = module
        rnn = module.encoder.rnn
        self.layers, self.hidden = rnn.num_layers, rnn.hidden_size
        self.lstm = isinstance(rnn, nn.LSTM)
        n_features = module.feature_mean.shape[0]
        channels = n_features if module.instance_norm == "none" else 2 * n_features
        front = module.front
        fields = [StateField("steps", (1,), np.float64)]
        if module.instance_norm == "running":
            fields.append(StateField("moments", (2, n_features), np.float64))
        if front is not None:
            fields.append(StateField("conv_in", (front.conv_in.kernel_size[0] - 1, channels)))
            if front.stride > 1:
                fields.append(StateField("pool", (front.conv_out.in_channels,), start=-np.inf))
            fields.append(StateField("conv_out", (front.conv_out.kernel_size[0] - 1, front.conv_out.in_channels)))
        fields.append(StateField("hidden", (self.layers, self.hidden)))
        if self.lstm:
            fields.append(StateField("cell", (self.layers, self.hidden)))
        fields.append(StateField("out_sum", (self.hidden,), np.float64))
        self.fields = fields
        self.state_bytes = sum(f.nbytes for f in fields)
        # The step's own handles on the model, taken once: make the stream after the model is on its device
        # (and make a new one after moving it). At a batch of one stream a step is ~50 tiny ops, and the
        # modules' per-call checks (and nn.Module attribute lookups) cost as much as the maths.
        self.device = module.feature_mean.device
        self.on_cpu = self.device.type == "cpu"
        self.mean, self.std = module.feature_mean, module.feature_std
        self.running = module.instance_norm == "running"
        self.conv_in = NewestConvOutput(front.conv_in) if front is not None else None
        self.conv_out = NewestConvOutput(front.conv_out) if front is not None else None
        self.stride = front.stride if front is not None else 1  # input steps per encoder step
        self.cells = StackedCells(rnn)
        self.head = module.head

    def initial(self) -> State:
        """The state of a stream that has seen nothing."""
        return {f.name: np.full(f.shape, f.start, dtype=f.dtype) for f in self.fields}

    @torch.inference_mode()
    def advance(self, states: list[State], chunks: list[np.ndarray], every_step: list[bool]) -> list[Advanced]:
        """Advance stream ``i`` from ``states[i]`` by ``chunks[i]`` (k_i, F), all streams together, one step per pass."""
        device = self.device
        if len(states) == 1:  # one stream (a lone WebSocket): a batch of one is a view, no copy
            s = {f.name: self._tensor(states[0][f.name][None]) for f in self.fields}
        else:
            s = {f.name: self._tensor(np.stack([st[f.name] for st in states])) for f in self.fields}
        lengths = [len(c) for c in chunks]
        outputs: list[list[tuple[int, np.ndarray]]] = [[] for _ in states]
        for t in range(max(lengths)):
            rows = [i for i, k in enumerate(lengths) if k > t]
            x_t = self._tensor(np.stack([chunks[i][t] for i in rows]))  # (b, F)
            index = torch.tensor(rows, device=device) if len(rows) < len(states) else None
            sub = s if index is None else {k: v[index] for k, v in s.items()}
            sub = self.step(sub, x_t)
            if index is None:
                s = sub
            else:
                for k, v in sub.items():
                    s[k][index] = v
            answer = [j for j, i in enumerate(rows) if every_step[i] or t == lengths[i] - 1]
            if answer:
                # Usually every stream in the pass answers (its last step): then no rows need picking.
                picked = sub if len(answer) == len(rows) else {k: sub[k][answer] for k in self.LOGIT_FIELDS}
                logits = self._array(self.logits(picked).float())  # (a, C)
                steps = self._array(picked["steps"][:, 0])
                for j, row, n in zip(answer, logits, steps):
                    outputs[rows[j]].append((int(n), row))
        arrays = {k: self._array(v) for k, v in s.items()}
        return [Advanced({k: arrays[k][i].copy() for k in arrays}, outputs[i]) for i in range(len(states))]

    # On the CPU, numpy arrays and tensors share memory both ways: no .to() or .cpu() to dispatch. At a batch
    # of one stream a step is dominated by per-op overhead, and these were 16 of its ~80 torch calls.
    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        return tensor if self.on_cpu else tensor.to(self.device)

    def _array(self, tensor: torch.Tensor) -> np.ndarray:
        return (tensor if self.on_cpu else tensor.cpu()).numpy()

    def step(self, s: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One new step of every stream in ``s`` (tensors with a leading batch dim b); x: (b, F) -> the new state."""
        s = dict(s)
        seen = s["steps"][:, 0]  # (b,) float64, steps before this one
        z = (x - self.mean) / self.std  # (b, F)
        if self.running:
            standardized, s["moments"] = running_step(x, s["moments"], seen)
            z = torch.cat([z, standardized], dim=-1)  # (b, 2F)
        emit = None  # (b,) bool: which streams' encoders take a step now; None: all of them
        if self.conv_in is not None:
            window = torch.cat([s["conv_in"], z[:, None]], dim=1)  # (b, k_in, C)
            s["conv_in"] = window[:, 1:]
            y = F.gelu(self.conv_in(window))  # (b, hidden)
            if self.stride > 1:
                # Pooled step j covers input steps j*stride-stride+1 .. j*stride: it is complete (and the
                # encoder reads it) at steps 0, stride, 2*stride, ...; in between its maximum builds up.
                pooled = torch.maximum(s["pool"], y)
                emit = torch.remainder(seen, self.stride) == 0
                s["pool"] = torch.where(emit[:, None], torch.full_like(pooled, -torch.inf), pooled)
                y = pooled
            window = torch.cat([s["conv_out"], y[:, None]], dim=1)  # (b, k_out, hidden)
            s["conv_out"] = window[:, 1:] if emit is None else torch.where(emit[:, None, None], window[:, 1:], s["conv_out"])
            z = F.gelu(self.conv_out(window))  # (b, hidden)

        def kept(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:  # new where the encoder stepped, else old
            return new if emit is None else torch.where(emit.view(-1, *[1] * (new.dim() - 1)), new, old)

        hidden, cell = self.cells.step(z, s["hidden"], s.get("cell"))  # (b, layers, hidden) each
        if cell is not None:
            s["cell"] = kept(cell, s["cell"])
        s["hidden"] = kept(hidden, s["hidden"])
        top = hidden[:, -1]  # (b, hidden): the top layer's output at this step
        s["out_sum"] = s["out_sum"] + kept(top.double(), torch.zeros((), dtype=torch.float64))
        s["steps"] = s["steps"] + 1
        return s

    def logits(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's answer from a state, as the whole-sequence forward gives it: (b, C)."""
        steps = s["steps"][:, 0]
        read = steps if self.stride == 1 else torch.div(steps - 1, self.stride, rounding_mode="floor") + 1  # (b,) encoder steps so far
        mean = (s["out_sum"] / read[:, None]).float()  # (b, hidden)
        return self.head(torch.cat([s["hidden"][:, -1], mean], dim=-1))


class NewestConvOutput:
    """A causal ``Conv1d``'s output at the newest step, from its last ``k`` inputs: one matmul.

    The conv's weight is copied once, in window order; build it after the model has its weights and device.
    """

    def __init__(self, conv: nn.Conv1d):
        self.weight = conv.weight.detach().permute(0, 2, 1).reshape(conv.out_channels, -1).contiguous()  # (out, k * C)
        self.bias = None if conv.bias is None else conv.bias.detach()

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        # window: (b, k, C) -> (b, out)
        return F.linear(window.flatten(1), self.weight, self.bias)


class StackedCells:
    """One step of a stacked one-way RNN, GRU or LSTM (in eval mode): each layer's cell in turn, on the module's own weights.

    On CPU at a batch of one, torch's whole-sequence LSTM op costs 3x its cells (GRU and RNN about the
    same), and the cells take the state as the stream keeps it, (b, layers, hidden), with no transposes.
    """

    def __init__(self, rnn: nn.RNNBase):
        if rnn.mode == "RNN_TANH":
            self.cell = torch.rnn_tanh_cell
        elif rnn.mode == "RNN_RELU":
            self.cell = torch.rnn_relu_cell
        elif rnn.mode == "GRU":
            self.cell = torch.gru_cell
        else:
            self.cell = torch.lstm_cell
        self.layers = rnn.all_weights  # per layer: w_ih, w_hh, and b_ih, b_hh when it has biases

    def step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        # x: (b, in), h: (b, layers, hidden), c: the same for an LSTM else None -> (h', c' or None)
        hs, cs = [], []
        for layer, weights in enumerate(self.layers):
            if c is None:
                x = self.cell(x, h[:, layer], *weights)
            else:
                x, c_layer = self.cell(x, (h[:, layer], c[:, layer]), *weights)
                cs.append(c_layer)
            hs.append(x)
        return torch.stack(hs, dim=1), (torch.stack(cs, dim=1) if c is not None else None)


class ForecasterStream:
    """Steps a :class:`Forecaster` over a sliding ``lookback`` window, many streams at once."""

    def __init__(self, module: Forecaster, lookback: int):
        self.module, self.lookback = module, lookback
        n_features = module.members[0].encoder.rnn.input_size
        self.fields = [StateField("steps", (1,), np.float64), StateField("window", (lookback, n_features))]
        self.state_bytes = sum(f.nbytes for f in self.fields)

    def initial(self) -> State:
        """The state of a stream that has seen nothing."""
        return {f.name: np.zeros(f.shape, dtype=f.dtype) for f in self.fields}

    @torch.inference_mode()
    def advance(self, states: list[State], chunks: list[np.ndarray], every_step: list[bool]) -> list[Advanced]:
        """Advance stream ``i`` by ``chunks[i]`` (k_i, F); one forward pass over every window asked for."""
        wanted: list[tuple[int, int, np.ndarray]] = []  # (stream, steps after, window)
        new_states = []
        for i, (state, chunk) in enumerate(zip(states, chunks)):
            seen = int(state["steps"][0])
            full = np.concatenate([state["window"], chunk])  # (lookback + k, F)
            k = len(chunk)
            for j in range(k) if every_step[i] else [k - 1]:
                if seen + j + 1 >= self.lookback:
                    wanted.append((i, seen + j + 1, full[j + 1 : j + 1 + self.lookback]))
            new_states.append({"steps": np.array([seen + k], dtype=np.float64), "window": full[-self.lookback :].copy()})
        outputs: list[list[tuple[int, np.ndarray]]] = [[] for _ in states]
        if wanted:
            device = next(self.module.parameters()).device
            x = torch.from_numpy(np.stack([w for _, _, w in wanted])).to(device)  # (n, lookback, F)
            out = self.module(x).cpu().numpy()  # (n, H, K, Q)
            for (i, n, _), row in zip(wanted, out):
                outputs[i].append((n, row))
        return [Advanced(state, out) for state, out in zip(new_states, outputs)]



class NeighbourStream:
    """Steps a :class:`DTWNearestNeighbour`, many streams at once: one DTW row per new step."""

    def __init__(self, module: DTWNearestNeighbour):
        self.module = module
        n, length = module.references.shape[:2]
        self.fields = [StateField("steps", (1,), np.float64), StateField("row", (n, length), np.float64, start=np.inf)]
        self.state_bytes = sum(f.nbytes for f in self.fields)
        self.device = module.references.device  # make the stream after the model is on its device
        self.references = module.references.double()
        self.last = (module.reference_lengths - 1)[None, :, None]  # (1, N, 1): each reference's last step

    def initial(self) -> State:
        """The state of a stream that has seen nothing."""
        return {f.name: np.full(f.shape, f.start, dtype=f.dtype) for f in self.fields}

    @torch.inference_mode()
    def advance(self, states: list[State], chunks: list[np.ndarray], every_step: list[bool]) -> list[Advanced]:
        """Advance stream ``i`` from ``states[i]`` by ``chunks[i]`` (k_i, F), all streams together, one step per pass."""
        rows = torch.from_numpy(np.stack([s["row"] for s in states])).to(self.device)  # (b, N, L)
        steps = np.array([s["steps"][0] for s in states], dtype=np.float64)  # (b,)
        lengths = [len(c) for c in chunks]
        outputs: list[list[tuple[int, np.ndarray]]] = [[] for _ in states]
        for t in range(max(lengths)):
            active = [i for i, k in enumerate(lengths) if k > t]
            x_t = torch.from_numpy(np.stack([chunks[i][t] for i in active])).to(self.device)  # (a, F)
            first = torch.from_numpy(steps[active] == 0).to(self.device)
            new = dtw_row(rows[active], first, x_t, self.references)  # (a, N, L)
            rows[active] = new
            steps[active] += 1
            answer = [j for j, i in enumerate(active) if every_step[i] or t == lengths[i] - 1]
            if answer:
                ends = new[answer].gather(-1, self.last.expand(len(answer), -1, -1))[..., 0]  # (n, N)
                for j, logits in zip(answer, self.module.logits(ends).cpu().numpy()):
                    outputs[active[j]].append((int(steps[active[j]]), logits))
        rows_out = rows.cpu().numpy()
        return [Advanced({"steps": steps[i : i + 1].copy(), "row": rows_out[i].copy()}, outputs[i]) for i in range(len(states))]
