"""The models a service instance serves, and the path of one request through them.

``ServedModels`` loads the chosen models from the store onto one device, gives each its own
:class:`~service.batching.MicroBatcher` running its task's ``run_batch`` (and, for models that can
stream, a second one running ``step_batch`` over stream states), and answers a whole request: resolve
each instance's model, validate every instance (nothing is queued until the whole request is valid),
make sure every model involved can take the work, queue the instances, and return the answers in
request order. ``step_streams`` does the same for ``/stream/<task>`` with state tokens;
``service.streams`` uses ``stream_model`` and ``step`` for WebSocket streams.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any, Callable

import numpy as np
import torch

from models.artifact import ArtifactError, LoadedModel, list_artifacts, load_artifact
from models.device import resolve_device
from service.batching import MicroBatcher
from service.config import Settings
from models.streaming import ClassifierStream, ForecasterStream, NotStreamable, pack_state, stream_for, unpack_state
from service.inference import (
    TASKS, ClassifyTask, ForecastTask, InstanceError, Limits, OutOfRange, Stepped, StreamStep, stream_cost, validate_steps,
)
from service.schemas import ModelInfo
from service.state_token import StateSigner, StateTokenError

log = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request-level problem (not tied to one instance), answered with a 4xx."""


def served_tags(requested: tuple[str, ...]) -> list[str]:
    """The tags to load: ``requested`` names/tags, or the newest version of every seqserve model in the store."""
    if requested:
        return list(requested)
    newest: dict[str, str] = {}
    for info in list_artifacts():  # newest first
        newest.setdefault(info.tag.split(":")[0], info.tag)
    return sorted(newest.values())


def shown(text: str, limit: int = 64) -> str:
    """``text`` as it may be echoed in an error: quoted, and cut short when long."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text)} characters)"


class ServedModels:
    """Every served model, its batcher, and the default model of each task."""

    def __init__(
        self,
        settings: Settings,
        tags: list[str],
        on_batch: Callable[[str, int], None] | None = None,
        on_state_batch: Callable[[str, int], None] | None = None,
        on_steps: Callable[[str, int], None] | None = None,
    ):
        self.limits = Limits(max_instances=settings.max_instances, max_length=settings.max_length)
        self.max_stream_steps = settings.stream_max_steps
        self.on_steps = on_steps
        self.request_timeout_s = settings.request_timeout_s
        self.device = resolve_device(settings.device)
        if self.device.type == "cuda":
            # cuDNN may compute convolutions and RNNs in TF32 (10-bit mantissa) by default; a stream's step
            # runs on cuBLAS in float32, and its answers must equal /classify's within 1e-5.
            torch.backends.cudnn.allow_tf32 = False
        if not tags:
            raise ArtifactError(
                "no seqserve model in the BentoML store to serve; train one first, e.g. "
                "`seqserve-train classify --dataset japanesevowels --name japanesevowels-gru`"
            )
        self.models: dict[str, LoadedModel] = {}
        self.batchers: dict[str, MicroBatcher] = {}
        self.streams: dict[str, ClassifierStream | ForecasterStream] = {}  # the models that can stream
        self.not_streamable: dict[str, str] = {}  # the others: tag -> why not
        self.stream_batchers: dict[str, MicroBatcher] = {}
        for tag in tags:
            model = load_artifact(tag, self.device)
            task = TASKS[model.card.task]
            self.models[model.tag] = model
            self.batchers[model.tag] = self._batcher(model, partial(task.run_batch, model), task.cost, settings, on_batch)
            try:
                self.streams[model.tag] = stream_for(model.module, model.card.lookback)
            except NotStreamable as err:
                self.not_streamable[model.tag] = str(err)
            else:
                step_batch = partial(task.step_batch, model, self.streams[model.tag])
                self.stream_batchers[model.tag] = self._batcher(model, step_batch, stream_cost, settings, on_state_batch)
            log.info("serving %s (%s) on %s%s", model.tag, model.card.task, self.device,
                     "" if model.tag in self.streams else f"; it cannot stream: {self.not_streamable[model.tag]}")
        self.signer = StateSigner(settings.state_key, list(self.models.values()))
        # The default model of a task is the first one of that task in the order served.
        self.defaults: dict[str, str] = {}
        # What an instance may name: a full tag, or a name alone (its first served version).
        self.by_name: dict[str, LoadedModel] = dict(self.models)
        for tag, model in self.models.items():
            self.defaults.setdefault(model.card.task, tag)
            self.by_name.setdefault(tag.split(":")[0], model)

    @staticmethod
    def _batcher(model: LoadedModel, run_batch: Callable, cost: Callable, settings: Settings, on_batch) -> MicroBatcher:
        """A batcher over ``run_batch(items)``; ``on_batch(tag, size)`` hears every batch's size."""
        return MicroBatcher(
            run_batch,
            cost=cost,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue_ms=settings.max_queue_ms,
            on_batch=partial(on_batch, model.tag) if on_batch else None,
        )

    def resolve(self, index: int, name: str | None, task: ClassifyTask | ForecastTask) -> LoadedModel:
        """The served model an instance asked for (or the task's default); InstanceError when there is none."""
        if name is None:
            if task.name not in self.defaults:
                raise InstanceError(index, "model", f"no {task.name} model is served; served models: {', '.join(self.models)}")
            return self.models[self.defaults[task.name]]
        model = self.by_name.get(name)
        if model is None:
            raise InstanceError(index, "model", f"unknown model {shown(name)}; served models: {', '.join(self.models)}")
        if model.card.task != task.name:
            other = "/forecast" if task.name == "classify" else "/classify"
            raise InstanceError(index, "model", f"{model.tag} is a {model.card.task} model; send it to {other}")
        return model

    def _check_count(self, instances: list[Any]) -> None:
        if not instances:
            raise RequestError("instances: is empty; send at least one instance")
        if len(instances) > self.limits.max_instances:
            raise RequestError(f"instances: has {len(instances)} items; the limit is {self.limits.max_instances} per request")

    async def answer(
        self,
        task: ClassifyTask | ForecastTask,
        instances: list[Any],
        client_gone: Callable[[], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Validate every instance of one /classify or /forecast request, then run them batched with others.

        Raises InstanceError or RequestError (400), and the batcher's RetryLater (503: overloaded, or past the deadline).
        """
        self._check_count(instances)
        groups: dict[str, list[tuple[int, Any]]] = {}
        for index, instance in enumerate(instances):
            model = self.resolve(index, instance.model, task)
            array = task.validate(index, getattr(instance, task.field), model, self.limits)
            groups.setdefault(model.tag, []).append((index, array))
        return await self._run(self.batchers, groups, task.field, len(instances), client_gone)

    async def answer_prepared(
        self,
        model: LoadedModel,
        arrays: list[np.ndarray],
        client_gone: Callable[[], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Instances of one model already validated (``task.prepare``), run batched with every other request's.

        Raises as :meth:`answer`."""
        task = TASKS[model.card.task]
        return await self._run(self.batchers, {model.tag: list(enumerate(arrays))}, task.field, len(arrays), client_gone)

    async def step_streams(
        self,
        task: ClassifyTask | ForecastTask,
        instances: list[Any],
        client_gone: Callable[[], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """One /stream/<task> request: advance every instance's stream (its state token, or a new stream).

        Each answer is the last step's answer plus ``state``, the token to send with the next steps, and
        with ``every_step`` the answers after each new step (``per_step``). Raises as :meth:`answer`.
        """
        self._check_count(instances)
        groups: dict[str, list[tuple[int, Any]]] = {}
        resolved: list[LoadedModel] = []
        for index, instance in enumerate(instances):
            model = self.resolve(index, instance.model, task)
            resolved.append(model)
            stream = self.stream_model(index, model)
            steps = validate_steps(index, instance.steps, model, self.max_stream_steps)
            if instance.state is None:
                state = stream.initial()
            else:
                try:
                    state = unpack_state(self.signer.open(instance.state, model, stream.state_bytes), stream.fields)
                except StateTokenError as err:
                    raise InstanceError(index, "state", str(err)) from None
            groups.setdefault(model.tag, []).append((index, StreamStep(state, steps, instance.every_step)))
        stepped: list[Stepped] = await self._run(self.stream_batchers, groups, "steps", len(instances), client_gone)
        answers = []
        for instance, model, result in zip(instances, resolved, stepped):
            self._count_steps(model.tag, len(instance.steps))
            token = self.signer.seal(model, pack_state(result.state, self.streams[model.tag].fields))
            answer = {**result.answers[-1], "state": token}
            if instance.every_step:
                answer["per_step"] = result.answers
            answers.append(answer)
        return answers

    def stream_model(self, index: int, model: LoadedModel) -> ClassifierStream | ForecasterStream:
        """The streaming wrapper of ``model``; InstanceError (naming why) when it cannot stream."""
        stream = self.streams.get(model.tag)
        if stream is None:
            raise InstanceError(index, "model", f"{model.tag} cannot stream: {self.not_streamable[model.tag]}")
        return stream

    async def step(self, model: LoadedModel, item: StreamStep, alone: bool = False) -> Stepped:
        """Advance one WebSocket stream, batched with every other stream of ``model``. Raises OutOfRange too.

        ``alone``: no other WebSocket stream is open (see MicroBatcher.submit)."""
        batcher = self.stream_batchers[model.tag]
        [result] = await batcher.submit([item], timeout_s=self.request_timeout_s, alone=alone)
        if isinstance(result, BaseException):
            raise result
        self._count_steps(model.tag, len(item.steps))
        return result

    def _count_steps(self, tag: str, steps: int) -> None:
        if self.on_steps:
            self.on_steps(tag, steps)

    async def _run(
        self,
        batchers: dict[str, MicroBatcher],
        groups: dict[str, list[tuple[int, Any]]],
        field: str,
        count: int,
        client_gone: Callable[[], bool] | None,
    ) -> list[Any]:
        """Queue every group on its model's batcher (after all of them admitted the work); results in request order."""
        for tag in groups:
            await batchers[tag].admit()
        results = await asyncio.gather(
            *(
                batchers[tag].submit([item for _, item in items], timeout_s=self.request_timeout_s, client_gone=client_gone)
                for tag, items in groups.items()
            )
        )
        answers: list[Any] = [None] * count
        for items, group_answers in zip(groups.values(), results):
            for (index, _), result in zip(items, group_answers):
                if isinstance(result, OutOfRange):
                    raise InstanceError(index, field, str(result))
                if isinstance(result, BaseException):
                    raise result
                answers[index] = result
        return answers

    def describe(self) -> list[ModelInfo]:
        """What GET /models returns: one entry per served model."""
        out = []
        for tag, model in self.models.items():
            card = model.card
            out.append(
                ModelInfo(
                    tag=tag,
                    task=card.task,
                    default=self.defaults.get(card.task) == tag,
                    architecture={"model_name": card.model_name, "cell": card.arch, **card.hparams},
                    features=card.features,
                    labels=card.labels,
                    lookback=card.lookback,
                    horizon=card.horizon,
                    quantiles=card.quantiles,
                    max_length=self.limits.max_length,
                    train_max_length=card.max_length,
                    metrics=card.metrics,
                    warnings=list(card.metrics.get("warnings", [])),
                    created=card.created,
                    device=str(self.device),
                    streamable=tag in self.streams,
                    not_streamable_because=self.not_streamable.get(tag),
                )
            )
        return out
