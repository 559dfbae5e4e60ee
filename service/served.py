"""The models a service instance serves, and the path of one request through them.

``ServedModels`` loads the chosen models from the store onto one device, gives each its own
:class:`~service.batching.MicroBatcher`, and answers a whole request: resolve each instance's model,
validate every instance (nothing is queued until the whole request is valid), queue the instances
on their models' batchers, and return the answers in request order.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from models.artifact import ArtifactError, LoadedModel, list_artifacts, load_artifact
from models.device import resolve_device
from service.batching import MicroBatcher
from service.config import Settings
from service.inference import InstanceError, Limits, check_classify, check_forecast, classify_batch, forecast_batch

log = logging.getLogger(__name__)

CHECKS = {"classify": (check_classify, "sequence"), "forecast": (check_forecast, "history")}
RUNNERS = {"classify": classify_batch, "forecast": forecast_batch}


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


class ServedModels:
    """Every served model, its batcher, and the default model of each task."""

    def __init__(self, settings: Settings, on_batch: Callable[[str, int], None] | None = None):
        self.limits = Limits(max_instances=settings.max_instances, max_length=settings.max_length)
        self.device = resolve_device(settings.device)
        tags = served_tags(settings.models)
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
            runner = RUNNERS[model.card.task]
            self.batchers[model.tag] = MicroBatcher(
                lambda items, model=model, runner=runner: runner(model, items),
                max_batch_size=settings.max_batch_size,
                max_wait_ms=settings.max_wait_ms,
                on_batch=(lambda size, tag=model.tag: on_batch(tag, size)) if on_batch else None,
            )
            log.info("serving %s (%s) on %s", model.tag, model.card.task, self.device)
        # The default model of a task is the first one of that task in the order served.
        self.defaults: dict[str, str] = {}
        # What an instance may name: a full tag, or a name alone (its first served version).
        self.by_name: dict[str, LoadedModel] = dict(self.models)
        for tag, model in self.models.items():
            self.defaults.setdefault(model.card.task, tag)
            self.by_name.setdefault(tag.split(":")[0], model)

    def resolve(self, index: int, name: str | None, task: str) -> LoadedModel:
        """The served model an instance asked for (or the task's default); InstanceError when there is none."""
        if name is None:
            if task not in self.defaults:
                raise InstanceError(index, "model", f"no {task} model is served; served models: {', '.join(self.models)}")
            return self.models[self.defaults[task]]
        model = self.by_name.get(name)
        if model is None:
            raise InstanceError(index, "model", f"unknown model {name!r}; served models: {', '.join(self.models)}")
        if model.card.task != task:
            other = "/forecast" if task == "classify" else "/classify"
            raise InstanceError(index, "model", f"{model.tag} is a {model.card.task} model; send it to {other}")
        return model

    async def answer(self, task: str, instances: list[Any]) -> list[dict[str, Any]]:
        """Validate every instance of one /classify or /forecast request, then run them batched with others."""
        if not instances:
            raise RequestError("instances: is empty; send at least one instance")
        if len(instances) > self.limits.max_instances:
            raise RequestError(f"instances: has {len(instances)} items; the limit is {self.limits.max_instances} per request")
        check, field = CHECKS[task]
        groups: dict[str, list[tuple[int, Any]]] = {}
        for index, instance in enumerate(instances):
            model = self.resolve(index, instance.model, task)
            array = check(index, getattr(instance, field), model, self.limits)
            groups.setdefault(model.tag, []).append((index, array))
        answers: list[dict[str, Any]] = [{}] * len(instances)
        results = await asyncio.gather(
            *(self.batchers[tag].submit([array for _, array in items]) for tag, items in groups.items())
        )
        for items, group_answers in zip(groups.values(), results):
            for (index, _), result in zip(items, group_answers):
                answers[index] = result
        return answers

    def describe(self) -> list[dict[str, Any]]:
        """What GET /models returns: one entry per served model."""
        out = []
        for tag, model in self.models.items():
            card = model.card
            out.append(
                {
                    "tag": tag,
                    "task": card.task,
                    "default": self.defaults.get(card.task) == tag,
                    "architecture": {"model_name": card.model_name, "cell": card.arch, **card.hparams},
                    "features": card.features,
                    "labels": card.labels,
                    "lookback": card.lookback,
                    "horizon": card.horizon,
                    "quantiles": card.quantiles,
                    "max_length": self.limits.max_length,
                    "train_max_length": card.max_length,
                    "metrics": card.metrics,
                    "created": card.created,
                    "device": str(self.device),
                }
            )
        return out
