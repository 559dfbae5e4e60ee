"""Live model updates: a new version stored under a served name is served without a restart.

Every ``SEQSERVE_MODEL_POLL_S`` seconds (10; ``0`` turns it off) each worker reads, in the BentoML store,
the newest version of every name it serves (the newest by the time it was stored, as at start-up). When
that is not the version serving the name, the worker loads it on a thread, beside the old one, through
the same checks as at start-up (``models.artifact.load_artifact``: the card, the weights' sha256, the
weights into the network; then its lane, ``service.lanes.build_lane``), and checks that it answers the
task the name is served for. Only then does it become the name's default version (and the task's default
where the old one was), in one step on the event loop; requests already handed the old lane finish there.
The ``SEQSERVE_MODEL_VERSIONS`` (2) most recently loaded versions of a name stay loaded; an older one is
unloaded: requests can no longer name it, and it is freed once the work already queued for it is answered.

A version that fails to load or check is logged (ERROR, naming the version and why), counted in
``seqserve_model_load_failures_total{model}``, and the old version keeps serving. It is tried again after
the poll interval, then after twice that, and so on up to an hour: a version being copied into the store
when it was first seen gets served at a later look; a corrupt one does not fill the log.

Why the store is watched rather than told through an admin request: every worker reads the store itself,
so every worker of every replica serves the new version within one interval and none can be missed, as
one request (reaching one worker of one replica) would be; nothing is added to the HTTP surface to secure;
and in a container a mounted store volume that an operator writes to is all it takes. The price is up to
one interval of delay, during which workers may disagree about the default version.

Names given as ``name:version`` in ``SEQSERVE_MODELS`` are pinned: they are never replaced or unloaded.
:class:`VersionPolicy` holds the decisions (what to load, when to try again, what to unload) and is tested
without a store or a server; :class:`StoreWatcher` is the loop around it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from models.artifact import list_artifacts, load_artifact, newest_versions
from models.device import resolve_device
from service.config import Settings
from service.lanes import Lanes, ModelLane, build_lane
from service.metrics import count_load_failure

log = logging.getLogger(__name__)

RETRY_MAX_S = 3600.0  # the longest wait before a failed version is tried again


def watched(requested: tuple[str, ...], lanes: Lanes) -> tuple[list[str], set[str]]:
    """The names whose new versions are served (every served name, or those ``SEQSERVE_MODELS`` gives without a
    version) and the tags it pins (those given as ``name:version``)."""
    pinned = {entry for entry in requested if ":" in entry}
    names = [entry for entry in requested if ":" not in entry] if requested else sorted({lane.name for lane in lanes})
    return names, pinned


@dataclass
class VersionPolicy:
    """The decisions of live updates: which version to load, when to try a failed one again, which to unload."""

    interval_s: float  # how often the store is read
    keep: int  # most versions of one name kept loaded
    clock: Callable[[], float] = time.monotonic
    _failed: dict[str, tuple[int, float]] = field(default_factory=dict)  # tag -> (failures, when it may be tried again)

    def to_load(self, newest: dict[str, str], serving: dict[str, str]) -> list[str]:
        """Of ``newest`` (name -> the store's newest tag), the tags that do not serve their name yet (``serving``:
        name -> tag) and are not waiting after a failure."""
        now = self.clock()
        return [tag for name, tag in sorted(newest.items())
                if name in serving and serving[name] != tag and self._failed.get(tag, (0, now))[1] <= now]

    def failed(self, tag: str) -> float:
        """Count a failure of ``tag``; the seconds until it may be tried again (the interval, doubled with every
        failure, at most :data:`RETRY_MAX_S`)."""
        failures = self._failed.get(tag, (0, 0.0))[0] + 1
        wait = min(self.interval_s * 2 ** (failures - 1), RETRY_MAX_S)
        self._failed[tag] = (failures, self.clock() + wait)
        return wait

    def served(self, tag: str) -> None:
        """``tag`` serves its name now: forget its failures."""
        self._failed.pop(tag, None)

    def to_unload(self, loaded: list[str], default: str, pinned: set[str]) -> list[str]:
        """Of one name's ``loaded`` tags (oldest first), those beyond the ``keep`` last loaded, never its ``default``
        nor a pinned one."""
        extra = len(loaded) - self.keep
        unload = []
        for tag in loaded:
            if extra <= 0:
                break
            if tag != default and tag not in pinned:
                unload.append(tag)
                extra -= 1
        return unload


class StoreWatcher:
    """One worker's live updates: every interval, the store's newest version of each watched name is served."""

    def __init__(self, lanes: Lanes, settings: Settings, names: list[str], pinned: set[str], clock: Callable[[], float] = time.monotonic):
        self.lanes = lanes
        self.settings = settings
        self.names = names
        self.pinned = pinned
        self.device = resolve_device(settings.device)
        self.policy = VersionPolicy(settings.model_poll_s, settings.model_versions, clock)
        self._task: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()  # unloaded lanes finishing their queued work
        self._failing: str | None = None  # the last look's error, while looks fail

    def retire_older_versions(self) -> list[str]:
        """Count the stored versions of each watched name that no worker keeps loaded as unloaded (``Lanes.retire``):
        those older than this worker's loaded ones and past the ``SEQSERVE_MODEL_VERSIONS`` newest. A worker
        replaced after a reload loads only the newest version, and would otherwise answer the versions the other
        workers unloaded as unknown models (400; 404 on /v2) where they answer 410; the versions they still keep
        (the newest few) it cannot answer, and says so as before. Returns the tags retired."""
        if not self.names:
            return []
        newest_first: dict[str, list] = {}
        for info in list_artifacts(self.names):  # newest first, as the newest versions are chosen
            if info.readable and info.tag not in self.pinned:
                newest_first.setdefault(info.name, []).append(info)
        retired = []
        for versions in newest_first.values():
            loaded = [place for place, info in enumerate(versions) if info.tag in self.lanes.by_tag]
            if loaded:
                retired += versions[max(loaded[-1] + 1, self.policy.keep):]
        for info in retired:
            self.lanes.retire(info.tag, info.card.weights_sha256)
        return [info.tag for info in retired]

    def start(self) -> None:
        """Start looking, on the running event loop (unless the interval is 0 or no name is watched)."""
        if self.policy.interval_s > 0 and self.names:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.policy.interval_s)
            await self.look()

    async def look(self) -> None:
        """One :meth:`check`, its failure logged: with the traceback when the error is new, in one line while the
        same error repeats (a version folder it may not read fails every look until someone fixes it)."""
        try:
            await self.check()
        except Exception as err:  # the store could not be read (an unmounted volume): look again next time
            error = f"{type(err).__name__}: {err}"
            if error == self._failing:
                log.error("looking for new model versions still fails (%s); looking again in %g s", error, self.policy.interval_s)
            else:
                log.exception("looking for new model versions failed; looking again in %g s", self.policy.interval_s)
            self._failing = error
        else:
            if self._failing is not None:
                log.info("looking for new model versions works again")
            self._failing = None

    async def check(self) -> list[str]:
        """One look at the store: serve the newest version of each watched name; the tags that now serve their name."""
        newest = await asyncio.to_thread(newest_versions, self.names)
        serving = {name: self.lanes.by_name[name].tag for name in self.names if name in self.lanes.by_name}
        switched = []
        for tag in self.policy.to_load({name: info.tag for name, info in newest.items()}, serving):
            name = tag.split(":")[0]
            lane = self.lanes.by_tag.get(tag)  # a version still loaded (the newer one was deleted from the store)
            if lane is None:
                try:
                    lane = await asyncio.to_thread(self._load, tag, self.lanes.by_name[name])
                except Exception as err:  # whatever failed, the old version keeps serving
                    self._failed(tag, serving[name], err)
                    continue
            self.lanes.make_default(lane)
            self.policy.served(tag)
            log.info("%s serves %s now, in place of %s", tag, name, serving[name])
            switched.append(tag)
            self._unload_old(name)
        return switched

    def _load(self, tag: str, current: ModelLane) -> ModelLane:
        """``tag`` loaded and checked as at start-up, as a lane; it must answer the task its name is served for."""
        model = load_artifact(tag, self.device)
        if model.card.task != current.task:
            raise ValueError(f"it is a {model.card.task} model, and {current.name} is served as a {current.task} model; "
                             "a name keeps its task while the server runs (restart it to change that)")
        return build_lane(model, self.settings, self.lanes.signer)

    def _failed(self, tag: str, serving: str, err: Exception) -> None:
        wait = self.policy.failed(tag)
        count_load_failure(tag)
        reason = str(err).removeprefix(f"{tag}: ") if isinstance(err, (ValueError, RuntimeError)) else f"{type(err).__name__}: {err}"
        log.error("new model version %s is not served: %s; %s keeps serving (next try in %g s)", tag, reason, serving, wait)

    def _unload_old(self, name: str) -> None:
        loaded = [lane.tag for lane in self.lanes.versions(name)]
        for tag in self.policy.to_unload(loaded, self.lanes.by_name[name].tag, self.pinned):
            lane = self.lanes.unload(tag)
            log.info("%s unloaded: the %d most recently loaded versions of %s stay (SEQSERVE_MODEL_VERSIONS)", tag, self.policy.keep, name)
            closing = asyncio.get_running_loop().create_task(lane.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
