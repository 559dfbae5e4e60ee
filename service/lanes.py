"""The served models, one lane each, and a request's way through them.

A :class:`ModelLane` is one served model with everything it serves by: the loaded model, the checks
of its inputs (``service.inputs``), its forward pass (``service.inference``) behind its own batcher,
its stream (when the model can stream) behind a second batcher, and the JSON answers it gives.
:class:`ClassifierLane` and :class:`ForecasterLane` differ in what they read and what they answer.
:meth:`ModelLane.infer` takes checked arrays and returns the model's outputs as arrays; the JSON
endpoints use it, and so can any other front door.

:class:`Lanes` holds a service instance's lanes, looked up by ``name:version``, by name (that name's
default version: the first one served, until ``service.reload`` serves a newer one) or by task (the
task's default: the first lane of that task, or the newer version of its name).
It also answers whole requests, as the JSON text of their answers: every instance is checked by its lane
before anything is queued, every lane involved admits the work, then the instances are queued and
answered in request order.

One /classify request: ``service.app`` -> :meth:`Lanes.classify` -> :meth:`ClassifierLane.validate`
(``service.inputs``) -> :meth:`ModelLane.infer` -> ``MicroBatcher`` (``service.batching``) ->
``ClassifyPass.run_batch`` (``service.inference``) -> the network; then :meth:`ClassifierLane.answer`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from models.artifact import ArtifactError, LoadedModel, load_artifact, newest_versions
from models.device import resolve_device
from models.streaming import NotStreamable, State, pack_state, stream_for, unpack_state
from service import inputs
from service.batching import Client, MicroBatcher
from service.config import Settings
from service.inference import ClassifyPass, ForecastPass, OutOfRange, Stepped, StreamPass, StreamStep
from service.inputs import InstanceError, Limits
from service.metrics import BatchSizes, show_model_version
from service.schemas import ModelInfo
from service.state_token import StateSigner, StateTokenError

log = logging.getLogger(__name__)

# Answers hold only plain lists and dicts of finite numbers (service.inference refuses the rest), so they are
# written as JSON directly, by one encoder (json.dumps with options builds a new one per call): HTTP answers
# and stream messages.
answer_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class RequestError(ValueError):
    """A request-level problem (not tied to one instance), answered with a 4xx."""


class VersionGone(InstanceError):
    """A stream's state token of a model version this server no longer serves (answered 410): start a new stream."""


def served_tags(requested: tuple[str, ...]) -> list[str]:
    """The tags to load: ``requested`` names/tags, or the newest version of every seqserve model in the store."""
    if requested:
        return list(requested)
    return sorted(info.tag for info in newest_versions().values())


def shown(text: str, limit: int = 64) -> str:
    """``text`` as it may be echoed in an error: quoted, and cut short when long."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text)} characters)"


class ModelLane(ABC):
    """One served model: its input checks, its batched forward pass, its streams and its answers."""

    task: str  # the endpoints it answers: "classify" (/classify, /stream/classify) or "forecast"
    forward_pass: type[ClassifyPass] | type[ForecastPass]  # the forward pass its batcher runs

    def __init__(self, model: LoadedModel, settings: Settings, signer: StateSigner):
        self.model = model
        self.tag = model.tag
        self.name = model.tag.split(":")[0]
        self.limits = Limits(max_instances=settings.max_instances, max_length=settings.max_length)
        self.max_steps = settings.stream_max_steps
        self.timeout_s = settings.request_timeout_s
        self.forward = forward = self.forward_pass(model)
        self.batcher = MicroBatcher(forward, sizes=BatchSizes(self.tag), **_batching(settings))
        self.signer = signer
        signer.add(model)
        self.not_streamable: str | None = None
        try:
            self.stream = stream_for(model.module, model.card.lookback)
        except NotStreamable as err:
            self.stream, self.stream_batcher, self.not_streamable = None, None, str(err)
        else:
            passes = StreamPass(forward, self.stream)
            self.stream_batcher = MicroBatcher(passes, sizes=BatchSizes(self.tag, streams=True), **_batching(settings))

    # ---------------------------------------------------------------------------------- whole sequences

    @abstractmethod
    def validate(self, index: int, values: list) -> np.ndarray:
        """One instance's input (``sequence`` or ``history``) as the array :meth:`infer` takes; InstanceError otherwise."""

    @abstractmethod
    def validate_array(self, index: int, array: np.ndarray) -> np.ndarray:
        """As :meth:`validate`, for input already a (T, F) float32 array of finite values (``service.v2``)."""

    async def admit(self) -> None:
        """RetryLater (503) when this lane's queue would take too long to drain (``MicroBatcher.admit``)."""
        await self.batcher.admit()

    async def infer(self, arrays: list[np.ndarray], client: Client | None = None) -> list[np.ndarray | OutOfRange]:
        """Checked inputs in, the model's outputs out (one each, in order), batched with other callers' work.

        Raises RetryLater (overloaded, past the deadline, or the client hung up)."""
        return await self.batcher.submit(arrays, timeout_s=self.timeout_s, client=client)

    @abstractmethod
    def answer(self, output: np.ndarray) -> dict[str, Any]:
        """One output of :meth:`infer` as its JSON answer."""

    # ------------------------------------------------------------------------------------------ streams

    def check_streamable(self, index: int | None) -> None:
        """InstanceError, saying why, when this lane's model cannot stream."""
        if self.stream is None:
            raise InstanceError(index, "model", f"{self.tag} cannot stream: {self.not_streamable}")

    def new_steps(self, index: int, values: list) -> np.ndarray:
        """A stream's new steps as (k, F) float32; InstanceError when they are unusable or the model cannot stream."""
        self.check_streamable(index)
        return inputs.new_steps(index, values, self.model, self.max_steps)

    def stream_state(self, index: int, token: str | None) -> State:
        """The state a stream goes on from: a new stream's (no token), or the one ``token`` carries."""
        if token is None:
            return self.stream.initial()
        try:
            return unpack_state(self.signer.open(token, self.model, self.stream.state_bytes), self.stream.fields)
        except StateTokenError as err:
            raise InstanceError(index, "state", str(err)) from None

    def seal(self, state: State) -> str:
        """The state token that carries ``state`` to the stream's next request, on any replica with the same key."""
        return self.signer.seal(self.model, pack_state(state, self.stream.fields))

    async def admit_steps(self) -> None:
        """As :meth:`admit`, for the stream batcher."""
        await self.stream_batcher.admit()

    async def step(
        self, items: list[StreamStep], client: Client | None = None, alone: bool = False
    ) -> list[Stepped | OutOfRange]:
        """Advance streams by their new steps, batched with every other stream of this model.

        ``alone``: no other stream is on its way to this lane (see MicroBatcher.submit)."""
        return await self.stream_batcher.submit(items, timeout_s=self.timeout_s, client=client, alone=alone)

    async def step_message(self, state: State, values: list, every_step: bool, alone: bool) -> tuple[State, list[str]]:
        """One WebSocket message: the stream's state after its new steps and the answers to send, as JSON texts.

        Raises InstanceError or OutOfRange (the stream goes on unchanged) and RetryLater."""
        item = StreamStep(state, self.new_steps(0, values), every_step)
        [result] = await self.step([item], alone=alone)
        if isinstance(result, BaseException):
            raise result
        return result.state, [answer_json(answer) for answer in self.step_answers(item, result)]

    @abstractmethod
    def step_answers(self, item: StreamStep, stepped: Stepped) -> list[dict[str, Any]]:
        """A stream's answers after ``item``'s steps, each with ``seen`` (its steps so far)."""

    async def close(self) -> None:
        """Once this lane no longer takes new requests: let the work in its queues finish (requests in flight get
        their answer or their deadline's 503), then stop its batchers' tasks."""
        for batcher in (self.batcher, self.stream_batcher):
            if batcher is not None:
                await batcher.close(within_s=self.timeout_s + 1)

    # --------------------------------------------------------------------------------------------- about

    def describe(self, default: bool, name_default: bool) -> ModelInfo:
        """What GET /models says of this lane's model."""
        card = self.model.card
        return ModelInfo(
            tag=self.tag,
            task=card.task,
            default=default,
            name_default=name_default,
            architecture={"model_name": card.model_name, "cell": card.arch, **card.hparams},
            features=card.features,
            targets=list(card.targets or []),
            labels=card.labels,
            lookback=card.lookback,
            horizon=card.horizon,
            quantiles=card.quantiles,
            max_length=self.limits.max_length,
            train_max_length=card.max_length,
            metrics=card.metrics,
            warnings=list(card.metrics.get("warnings", [])),
            created=card.created,
            device=str(self.model.device),
            streamable=self.stream is not None,
            not_streamable_because=self.not_streamable,
        )


class ClassifierLane(ModelLane):
    """A served classifier: (T, F) sequences in, a label and class probabilities out."""

    task, forward_pass = "classify", ClassifyPass

    def validate(self, index: int, values: list) -> np.ndarray:
        return inputs.sequence(index, values, self.model, self.limits)

    def validate_array(self, index: int, array: np.ndarray) -> np.ndarray:
        return array  # the whole sequence is read

    def answer(self, probabilities: np.ndarray) -> dict[str, Any]:
        """Probabilities (C,) as the label, its index and every class's probability."""
        labels, best = self.model.card.labels, int(probabilities.argmax())
        return {"model": self.tag, "label": labels[best], "label_index": best, "probabilities": dict(zip(labels, probabilities.tolist()))}

    def step_answers(self, item: StreamStep, stepped: Stepped) -> list[dict[str, Any]]:
        return [{**self.answer(probabilities), "seen": n} for n, probabilities in stepped.outputs]


class ForecasterLane(ModelLane):
    """A served forecaster: the last ``lookback`` steps in, the next ``horizon`` out, in the history's own scale."""

    task, forward_pass = "forecast", ForecastPass

    def validate(self, index: int, values: list) -> np.ndarray:
        return inputs.history_window(index, values, self.model, self.limits)

    def validate_array(self, index: int, array: np.ndarray) -> np.ndarray:
        return inputs.last_window(index, array, self.model)

    def answer(self, forecast: np.ndarray) -> dict[str, Any]:
        """A forecast (H, K, Q) as its point forecast, the quantiles beside it."""
        card, point = self.model.card, self.model.module.point_index

        def series(values: np.ndarray) -> list:  # (H, K) -> [h…] for one target, [[k…], …] for several
            return values[:, 0].tolist() if len(card.targets) == 1 else values.tolist()

        answer: dict[str, Any] = {"model": self.tag, "horizon": card.horizon, "forecast": series(forecast[..., point])}
        if card.quantiles:
            answer["quantiles"] = {str(q): series(forecast[..., i]) for i, q in enumerate(card.quantiles)}
        return answer

    def step_answers(self, item: StreamStep, stepped: Stepped) -> list[dict[str, Any]]:
        """A step before the stream has ``lookback`` steps gets ``"forecast": null`` and how many steps it still
        needs, where /forecast would refuse the history as too short."""
        seen = int(stepped.state["steps"][0])
        asked = range(seen - len(item.steps) + 1, seen + 1) if item.every_step else [seen]
        ready, card = dict(stepped.outputs), self.model.card
        return [
            {**self.answer(ready[n]), "seen": n} if n in ready
            else {"model": self.tag, "horizon": card.horizon, "forecast": None, "steps_needed": card.lookback - n, "seen": n}
            for n in asked
        ]


def _batching(settings: Settings) -> dict[str, float]:
    """A lane's batcher settings (both of its batchers)."""
    return {"max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms, "max_queue_ms": settings.max_queue_ms}


LANE_FOR_TASK: dict[str, type[ClassifierLane] | type[ForecasterLane]] = {"classify": ClassifierLane, "forecast": ForecasterLane}


class Lanes:
    """The lanes of one service instance, by ``name:version``, by name and by task, and the requests they answer.

    A name's default version answers requests that give the name alone; a task's default answers requests
    that name no model. At start-up each is the first lane served of that name or task; while the service
    runs, :meth:`make_default` hands them to a new version (``service.reload``) and :meth:`unload` takes an
    old one out of service. A request keeps the lanes it was handed until it is answered, so work in flight
    finishes on the version it started on.
    """

    def __init__(self, limits: Limits, signer: StateSigner):
        self.limits = limits
        self.signer = signer  # every lane's: it makes and opens the state tokens of every version served
        self.by_tag: dict[str, ModelLane] = {}
        self.by_name: dict[str, ModelLane] = {}  # a full tag, or a name alone: its default version
        self.defaults: dict[str, ModelLane] = {}  # a task: its default lane
        self.retired: set[str] = set()  # tags of versions unloaded while newer ones of their name serve

    def add(self, lane: ModelLane) -> None:
        """Serve ``lane``: it becomes the default of its name and of its task when they have none yet."""
        self.by_tag[lane.tag] = lane
        self.by_name[lane.tag] = lane
        self.by_name.setdefault(lane.name, lane)
        self.defaults.setdefault(lane.task, lane)
        self._show(lane.name)

    def make_default(self, lane: ModelLane) -> None:
        """Serve ``lane`` (a new lane, or a loaded one) as its name's default version, and as its task's default
        where that was the name's previous default. ``lane`` must be of the task its name is served for."""
        before = self.by_name.get(lane.name)
        self.by_tag[lane.tag] = lane
        self.by_name[lane.tag] = self.by_name[lane.name] = lane
        self.retired.discard(lane.tag)
        if before is not None and self.defaults.get(lane.task) is before:
            self.defaults[lane.task] = lane
        self.defaults.setdefault(lane.task, lane)
        self._show(lane.name)

    def unload(self, tag: str) -> ModelLane:
        """Take the version ``tag`` (not its name's default) out of service; requests can no longer reach it."""
        lane = self.by_tag.pop(tag)
        del self.by_name[tag]
        self.retired.add(tag)
        show_model_version(lane.name, tag.partition(":")[2], default=None)
        return lane

    def retire(self, tag: str, weights_sha256: str) -> None:
        """Count ``tag``, a stored version of a served name older than every loaded one, as unloaded: a worker that
        started after a reload (a replaced one) never loaded what the others unloaded, and answers it alike (410)."""
        self.retired.add(tag)
        self.signer.add_retired(tag, weights_sha256)

    def why_unloaded(self, tag: str) -> str | None:
        """Why ``tag`` answers no more when it is a version unloaded since newer ones of its name came (a 410), and
        which version serves its name now; None for any other tag."""
        if tag not in self.retired:
            return None
        name = tag.split(":")[0]
        return f"{tag} is no longer served here; {self.by_name[name].tag} serves {name} now"

    def versions(self, name: str) -> list[ModelLane]:
        """The loaded versions of ``name``, in the order they were loaded."""
        return [lane for lane in self if lane.name == name]

    def _show(self, name: str) -> None:
        """``seqserve_model_version`` for every loaded version of ``name``: which one is its default."""
        for lane in self.versions(name):
            show_model_version(name, lane.tag.partition(":")[2], default=self.by_name[name] is lane)

    def __iter__(self):
        return iter(list(self.by_tag.values()))

    def get(self, name: str) -> ModelLane | None:
        """The lane of ``name:version``, or of a name's default version; None when nothing serves it."""
        return self.by_name.get(name)

    def lane_for(self, index: int | None, name: str | None, task: str, stream: bool = False) -> ModelLane:
        """The lane instance ``index`` (None: the request) asked for, or the task's default; InstanceError when
        there is none (``stream``: the request came to a /stream route, which a wrong task's hint names)."""
        if name is None:
            if task not in self.defaults:
                raise InstanceError(index, "model", f"no {task} model is served; served models: {', '.join(self.by_tag)}")
            return self.defaults[task]
        lane = self.by_name.get(name)
        if lane is None and (gone := self.why_unloaded(name)):
            raise VersionGone(index, "model", gone)
        if lane is None:
            raise InstanceError(index, "model", f"unknown model {shown(name)}; served models: {', '.join(self.by_tag)}")
        if lane.task != task:
            other = ("/stream" if stream else "") + ("/forecast" if task == "classify" else "/classify")
            raise InstanceError(index, "model", f"{lane.tag} is a {lane.task} model; send it to {other}")
        return lane

    def stream_lane(self, index: int, name: str | None, task: str, token: str | None) -> ModelLane:
        """The lane that continues a stream: :meth:`lane_for`'s, unless the instance names no version and its
        ``token`` was made by another version of that same model: then that version's lane, so that a stream keeps
        its version while the version is served. An instance that names no model goes on with the model that
        made its token, where that model still serves this task (else the task's default, whose check of the
        token then says which model made it). VersionGone when that version is no longer served."""
        made_by = self.signer.made_by(token) if token is not None else None
        maker_name = made_by.split(":")[0] if made_by is not None else None
        if name is None and maker_name is not None:
            maker = self.by_name.get(maker_name)
            name = maker.name if maker is not None and maker.task == task else None
        lane = self.lane_for(index, name, task, stream=True)
        if made_by is None or made_by == lane.tag or name == lane.tag or maker_name != lane.name:
            return lane  # a new stream, this lane's own token, a version asked for by tag, or another model's token
        if made_by in self.by_tag:
            return self.by_tag[made_by]
        raise VersionGone(index, "state", f"was made by {made_by}, which is no longer served here ({lane.tag} serves "
                          f"{lane.name} now); start a new stream without a state")

    def describe(self) -> list[ModelInfo]:
        """What GET /models returns: one entry per served model version."""
        return [lane.describe(default=self.defaults.get(lane.task) is lane, name_default=self.by_name.get(lane.name) is lane)
                for lane in self]

    # ------------------------------------------------------------------------------------------ requests

    async def classify(self, instances: list[Any], client: Client | None = None, model: str | None = None) -> str:
        """One /classify request's answers, in order, as JSON; ``model`` answers the instances that name none.
        Raises InstanceError or RequestError (400) and RetryLater (503)."""
        names = self._asked_for(instances, model, "classify")
        checked = [self._checked(index, name, "classify", instance.sequence)
                   for index, (name, instance) in enumerate(zip(names, instances))]
        return await self._answers(checked, "sequence", client)

    async def forecast(self, instances: list[Any], client: Client | None = None, model: str | None = None) -> str:
        """One /forecast request's answers, in order, as JSON. Takes and raises as :meth:`classify`."""
        names = self._asked_for(instances, model, "forecast")
        checked = [self._checked(index, name, "forecast", instance.history)
                   for index, (name, instance) in enumerate(zip(names, instances))]
        return await self._answers(checked, "history", client)

    async def step_streams(self, task: str, instances: list[Any], client: Client | None = None, model: str | None = None) -> str:
        """One /stream/<task> request as JSON: advance every instance's stream (its state token, or a new stream).

        Each answer is the last step's answer plus ``state``, the token to send with the next steps, and
        with ``every_step`` the answers after each new step (``per_step``). Takes and raises as :meth:`classify`.
        """
        names = self._asked_for(instances, model, task, stream=True)
        checked = []
        for index, (name, instance) in enumerate(zip(names, instances)):
            lane = self.stream_lane(index, name, task, instance.state)
            steps = lane.new_steps(index, instance.steps)
            checked.append((lane, StreamStep(lane.stream_state(index, instance.state), steps, instance.every_step)))
        groups = _grouped(checked)
        if len(groups) > 1:  # several models: none queues work before all of them admitted theirs (submit admits too)
            for lane in groups:
                await lane.admit_steps()
        results = await asyncio.gather(*(lane.step([item for _, item in items], client) for lane, items in groups.items()))
        answers = []
        for (lane, item), stepped in zip(checked, _in_order(groups, results, "steps", len(checked))):
            per_step = lane.step_answers(item, stepped)
            answer = {**per_step[-1], "state": lane.seal(stepped.state)}
            if item.every_step:
                answer["per_step"] = per_step
            answers.append(answer)
        return answer_json(answers)

    def _asked_for(self, instances: list[Any], model: str | None, task: str, stream: bool = False) -> list[str | None]:
        """The model each instance asked for: its own ``model``, else the request's. The request's is checked here,
        once, even where every instance names its own: an unknown one, one of another task or one that cannot
        ``stream`` is named as the request's field, not as every instance's."""
        self._check_count(instances)
        if model is not None:
            lane = self.lane_for(None, model, task, stream)
            if stream:
                lane.check_streamable(None)
        return [instance.model if instance.model is not None else model for instance in instances]

    def _check_count(self, instances: list[Any]) -> None:
        if not instances:
            raise RequestError("instances: is empty; send at least one instance")
        if len(instances) > self.limits.max_instances:
            raise RequestError(f"instances: has {len(instances)} items; the limit is {self.limits.max_instances} per request")

    def _checked(self, index: int, name: str | None, task: str, values: list) -> tuple[ModelLane, np.ndarray]:
        lane = self.lane_for(index, name, task)
        return lane, lane.validate(index, values)

    async def _answers(
        self, checked: list[tuple[ModelLane, np.ndarray]], field: str, client: Client | None
    ) -> str:
        """Queue every lane's arrays (once all of those lanes admitted the work); the answers in request order, as JSON."""
        groups = _grouped(checked)
        if len(groups) > 1:  # several models: none queues work before all of them admitted theirs (submit admits too)
            for lane in groups:
                await lane.admit()
        results = await asyncio.gather(*(lane.infer([array for _, array in items], client) for lane, items in groups.items()))
        outputs = _in_order(groups, results, field, len(checked))
        return answer_json([lane.answer(output) for (lane, _), output in zip(checked, outputs)])


def _grouped(checked: list[tuple[ModelLane, Any]]) -> dict[ModelLane, list[tuple[int, Any]]]:
    """The items of a request by lane, each with its index in the request."""
    groups: dict[ModelLane, list[tuple[int, Any]]] = {}
    for index, (lane, item) in enumerate(checked):
        groups.setdefault(lane, []).append((index, item))
    return groups


def _in_order(groups: dict[ModelLane, list[tuple[int, Any]]], results: list[list[Any]], field: str, count: int) -> list[Any]:
    """The lanes' results in request order; an instance's OutOfRange is a 400 naming it, another error is raised."""
    ordered: list[Any] = [None] * count
    for items, outputs in zip(groups.values(), results):
        for (index, _), output in zip(items, outputs):
            if isinstance(output, OutOfRange):
                raise InstanceError(index, field, str(output))
            if isinstance(output, BaseException):
                raise output
            ordered[index] = output
    return ordered


def load_lanes(settings: Settings, tags: list[str]) -> Lanes:
    """A lane for each of ``tags``, loaded from the store onto the settings' device, in that order."""
    device = resolve_device(settings.device)
    if device.type == "cuda":
        # cuDNN may compute convolutions and RNNs in TF32 (10-bit mantissa) by default; a stream's step
        # runs on cuBLAS in float32, and its answers must equal /classify's within 1e-5.
        torch.backends.cudnn.allow_tf32 = False
    if not tags:
        raise ArtifactError(
            "no seqserve model in the BentoML store to serve; train one first, e.g. "
            "`seqserve-train classify --dataset japanesevowels --name japanesevowels-gru`"
        )
    lanes = Lanes(Limits(max_instances=settings.max_instances, max_length=settings.max_length), StateSigner(settings.state_key, []))
    for tag in tags:
        lanes.add(build_lane(load_artifact(tag, device), settings, lanes.signer))
    return lanes


def build_lane(model: LoadedModel, settings: Settings, signer: StateSigner) -> ModelLane:
    """The lane that serves ``model`` (loaded by ``models.artifact.load_artifact``, which checked it)."""
    lane = LANE_FOR_TASK[model.card.task](model, settings, signer)
    log.info("serving %s (%s) on %s%s", lane.tag, lane.task, model.device,
             "" if lane.stream is not None else f"; it cannot stream: {lane.not_streamable}")
    return lane
