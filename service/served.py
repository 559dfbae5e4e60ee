"""The models a service instance serves, and the path of one request through them.

``ServedModels`` loads the chosen models from the store onto one device, gives each its own
:class:`~service.batching.MicroBatcher` running its task's ``run_batch``, and answers a whole request:
resolve each instance's model, validate every instance (nothing is queued until the whole request is
valid), make sure every model involved can take the work, queue the instances, and return the answers
in request order.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from models.artifact import ArtifactError, LoadedModel, list_artifacts, load_artifact
from models.device import resolve_device
from service.batching import MicroBatcher
from service.config import Settings
from service.inference import TASKS, ClassifyTask, ForecastTask, InstanceError, Limits, OutOfRange
from service.schemas import ModelInfo

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

    def __init__(self, settings: Settings, tags: list[str], on_batch: Callable[[str, int], None] | None = None):
        self.limits = Limits(max_instances=settings.max_instances, max_length=settings.max_length)
        self.request_timeout_s = settings.request_timeout_s
        self.device = resolve_device(settings.device)
        if not tags:
            raise ArtifactError(
                "no seqserve model in the BentoML store to serve; train one first, e.g. "
                "`seqserve-train classify --dataset japanesevowels --name japanesevowels-gru`"
            )
        self.models: dict[str, LoadedModel] = {}
        self.batchers: dict[str, MicroBatcher] = {}
        for tag in tags:
            model = load_artifact(tag, self.device)
            self.models[model.tag] = model
            self.batchers[model.tag] = self._batcher(model, TASKS[model.card.task], settings, on_batch)
            log.info("serving %s (%s) on %s", model.tag, model.card.task, self.device)
        # The default model of a task is the first one of that task in the order served.
        self.defaults: dict[str, str] = {}
        # What an instance may name: a full tag, or a name alone (its first served version).
        self.by_name: dict[str, LoadedModel] = dict(self.models)
        for tag, model in self.models.items():
            self.defaults.setdefault(model.card.task, tag)
            self.by_name.setdefault(tag.split(":")[0], model)

    @staticmethod
    def _batcher(model: LoadedModel, task, settings: Settings, on_batch) -> MicroBatcher:
        def run_batch(arrays: list) -> list:
            return task.run_batch(model, arrays)

        def record(size: int) -> None:
            on_batch(model.tag, size)

        return MicroBatcher(
            run_batch,
            cost=task.cost,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue_ms=settings.max_queue_ms,
            on_batch=record if on_batch else None,
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

    async def answer(
        self,
        task: ClassifyTask | ForecastTask,
        instances: list[Any],
        client_gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> list[dict[str, Any]]:
        """Validate every instance of one /classify or /forecast request, then run them batched with others.

        Raises InstanceError or RequestError (400), and the batcher's Overloaded or DeadlineExceeded (503).
        """
        if not instances:
            raise RequestError("instances: is empty; send at least one instance")
        if len(instances) > self.limits.max_instances:
            raise RequestError(f"instances: has {len(instances)} items; the limit is {self.limits.max_instances} per request")
        groups: dict[str, list[tuple[int, Any]]] = {}
        for index, instance in enumerate(instances):
            model = self.resolve(index, instance.model, task)
            array = task.validate(index, getattr(instance, task.field), model, self.limits)
            groups.setdefault(model.tag, []).append((index, array))
        for tag in groups:
            await self.batchers[tag].admit()
        results = await asyncio.gather(
            *(
                self.batchers[tag].submit([array for _, array in items], timeout_s=self.request_timeout_s, client_gone=client_gone)
                for tag, items in groups.items()
            )
        )
        answers: list[dict[str, Any]] = [{}] * len(instances)
        for items, group_answers in zip(groups.values(), results):
            for (index, _), result in zip(items, group_answers):
                if isinstance(result, OutOfRange):
                    raise InstanceError(index, task.field, str(result))
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
                )
            )
        return out
