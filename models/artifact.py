"""The stored model format: the one module that writes and reads seqserve models.

A seqserve model is a BentoML model (``bentoml.models.create``) whose folder holds

* ``weights.pt`` — the ``state_dict`` only, loaded with ``weights_only=True`` (never a pickled module);
* ``seqserve.json`` — the :class:`ModelCard`: everything needed to rebuild and serve the network
  (registry name and hyper-parameters, features, labels, lookback/horizon/quantiles, normalisation),
  plus test metrics, baselines, a fingerprint of the training data and library versions.

BentoML's own labels and metadata carry a short summary so ``bentoml models list`` is readable, and
the label ``seqserve`` marks our models among others in the store. Every save is a new version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import bentoml
import numpy as np
import torch
from torch import nn

from models.registry import create_model

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
WEIGHTS_FILE = "weights.pt"
CARD_FILE = "seqserve.json"
SEQSERVE_LABEL = "seqserve"
TASKS = ("classify", "forecast")
# A model name is a BentoML tag name (BentoML 1.4's rule, bentoml._internal.tag; tests/test_artifact.py checks they agree).
NAME_PATTERN = re.compile(r"[a-z0-9]([-._a-z0-9]*[a-z0-9])?")
NAME_MAX_LENGTH = 63
NAME_RULE = f"1 to {NAME_MAX_LENGTH} lowercase letters, digits, '_', '-' or '.', starting and ending with a letter or digit"


class ArtifactError(RuntimeError):
    """A stored model is missing, of an unknown format, corrupt, or does not match its metadata."""


@dataclass
class ModelCard:
    """Everything stored next to the weights. Round-trips through JSON."""

    task: str  # "classify" or "forecast"
    model_name: str  # registry name, e.g. "gru_classifier"
    hparams: dict[str, Any]  # create_model(model_name, **model_args(card)): these, and a forecaster's lookback
    features: list[str]  # input channel names, in order (forecast: targets first)
    labels: list[str] = field(default_factory=list)  # classify: class names, index = logit position
    targets: list[str] = field(default_factory=list)  # forecast: forecast channels
    lookback: int | None = None  # forecast: history steps the model reads (stored here only)
    horizon: int | None = None  # forecast: steps it predicts
    quantiles: list[float] = field(default_factory=list)  # forecast: quantile levels (0.5 included)
    max_length: int | None = None  # classify: longest training sequence
    normalization: dict[str, Any] = field(default_factory=dict)
    # {"test", "baselines": {name: {...}}, "baseline_notes", "beats_baseline": bool, "warnings": [sentences]}
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # source, fingerprint, sizes
    training: dict[str, Any] = field(default_factory=dict)  # epochs, seed, device, timings
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    weights_sha256: str = ""  # checked on load: damaged weights are refused, not served
    schema_version: int = SCHEMA_VERSION

    @property
    def arch(self) -> str:
        return self.hparams.get("cell", self.model_name.split("_")[0])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, default=_json_default)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelCard":
        version = raw.get("schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise ArtifactError(
                f"unknown schema_version {version!r}; this seqserve reads {list(SUPPORTED_SCHEMA_VERSIONS)}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in raw]
        if missing:
            raise ArtifactError(f"model card is missing {', '.join(missing)}")
        card = cls(**{k: v for k, v in raw.items() if k in known})
        if card.task not in TASKS:
            raise ArtifactError(f"unknown task {card.task!r}; expected one of {', '.join(TASKS)}")
        return card


def model_args(card: ModelCard) -> dict[str, Any]:
    """``create_model``'s arguments for ``card``: its hyper-parameters and, for a forecaster, its lookback.

    A forecaster's lookback is stored once, as ``card.lookback``. Cards written before that hold it in
    ``hparams`` too, with the same value, and the oldest hold it only at the top, for networks whose
    start does not read the window's length; either way the top-level value is the one."""
    if card.task != "forecast" or card.lookback is None:
        return card.hparams
    return {**card.hparams, "lookback": card.lookback}


@dataclass
class LoadedModel:
    """A model rebuilt from the store, in eval mode on ``device``."""

    tag: str  # "name:version"
    card: ModelCard
    module: nn.Module
    device: torch.device


def library_versions() -> dict[str, str]:
    """Versions recorded in every card, to explain differences between machines."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "bentoml": bentoml.__version__,
        "numpy": np.__version__,
    }


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a model card")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_name(name: str) -> str:
    """``name`` itself if the store takes it as a model name unchanged; else a ValueError that states the rule.

    BentoML lowercases capitals (with a warning): they are refused here, so a model has one name everywhere.
    A valid name is one plain path component (no '/', never '.' or '..'), so a folder named after it stays
    inside its parent folder.
    """
    if len(name) > NAME_MAX_LENGTH or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"invalid model name {name!r}: a name is {NAME_RULE}")
    return name


def save_artifact(name: str, module: nn.Module, card: ModelCard) -> str:
    """Store ``module``'s weights and ``card`` as a new version of ``name``; return the tag ``name:version``."""
    check_name(name)
    card.created = card.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
    card.versions = card.versions or library_versions()
    summary = {
        "schema_version": card.schema_version,
        "task": card.task,
        "arch": card.arch,
        **{f"test_{k}": v for k, v in card.metrics.get("test", {}).items() if isinstance(v, (int, float))},
    }
    labels = {SEQSERVE_LABEL: "true", "task": card.task, "arch": card.arch}
    with bentoml.models.create(name, labels=labels, metadata=summary) as stored:
        folder = Path(stored.path)
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        torch.save(state, folder / WEIGHTS_FILE)
        card.weights_sha256 = _sha256(folder / WEIGHTS_FILE)
        (folder / CARD_FILE).write_text(card.to_json())
        _readable_like(folder, folder / WEIGHTS_FILE)
        return str(stored.tag)


def _readable_like(folder: Path, file: Path) -> None:
    """Let whoever may read ``file`` read and list ``folder`` too.

    BentoML makes a version's folder with ``mkdtemp`` (owner only, 0700) and copies that mode into the store,
    while the files in it get the umask's (0644 usually). A store written on the host and mounted into a
    container is read there by the image's non-root user (1034): with 0700 it could read no version.
    """
    read = file.stat().st_mode & 0o444
    folder.chmod(0o700 | read | read >> 2)


def read_card(tag: str) -> tuple[str, ModelCard, Path]:
    """Resolve ``tag`` in the store and read its card; return (full tag, card, model folder)."""
    try:
        stored = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        known = ", ".join(info.tag for info in list_artifacts()) or "none"
        raise ArtifactError(f"no model {tag!r} in the BentoML store; seqserve models there: {known}") from None
    folder = Path(stored.path)
    card_path = folder / CARD_FILE
    if not card_path.exists():
        raise ArtifactError(f"{stored.tag} is not a seqserve model: {CARD_FILE} is missing")
    try:
        raw = json.loads(card_path.read_text())
    except OSError as err:
        raise ArtifactError(f"{stored.tag}: {CARD_FILE} cannot be read ({err.strerror or err})") from None
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise ArtifactError(f"{stored.tag}: {CARD_FILE} is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise ArtifactError(f"{stored.tag}: {CARD_FILE} holds a JSON {type(raw).__name__}, not an object")
    try:
        card = ModelCard.from_dict(raw)
    except ArtifactError as err:
        raise ArtifactError(f"{stored.tag}: {err}") from None
    return str(stored.tag), card, folder


def load_artifact(tag: str, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the stored model ``tag`` on ``device``; refuse unknown formats and damaged or mismatched weights."""
    full_tag, card, folder = read_card(tag)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise ArtifactError(f"{full_tag}: weights file {WEIGHTS_FILE} is missing")
    if card.weights_sha256 and _sha256(weights) != card.weights_sha256:
        raise ArtifactError(f"{full_tag}: weights are corrupt (sha256 does not match the one stored at save time)")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged files
        raise ArtifactError(f"{full_tag}: weights cannot be read ({type(err).__name__}: {err})") from None
    try:
        module = create_model(card.model_name, **model_args(card))
    except (TypeError, ValueError) as err:
        raise ArtifactError(f"{full_tag}: cannot rebuild {card.model_name!r} from its metadata: {err}") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ArtifactError(f"{full_tag}: metadata does not match the weights: {err}") from None
    device = torch.device(device)
    module.to(device).eval()
    for sub in module.modules():
        if isinstance(sub, nn.RNNBase):
            sub.flatten_parameters()  # contiguous cuDNN weights after .to(cuda)
    return LoadedModel(full_tag, card, module, device)


@dataclass
class ArtifactInfo:
    """One stored seqserve model, for listings: its card, or why it cannot be read."""

    tag: str
    card: ModelCard | None  # None when the model cannot be read
    problem: str = ""  # why it cannot be read ("" when it can)
    created: str = ""  # when it was stored (the card's time, else BentoML's)
    stored: str = ""  # BentoML's time of storing, to the microsecond: orders versions stored within one second

    @property
    def name(self) -> str:
        return self.tag.split(":")[0]

    @property
    def readable(self) -> bool:
        return self.card is not None


def list_artifacts(names: Iterable[str] = ()) -> list[ArtifactInfo]:
    """Every seqserve model version in the store (only those of ``names`` when given), newest first, the
    unreadable ones included.

    A model whose card cannot be read is listed with ``card=None`` and ``problem`` saying why, never
    skipped: skipping it silently made the server come up with fewer models than stored and quietly
    changed which model answered by default. Callers decide what to do with such a model.
    """
    found = []
    for stored in _stored(names):
        if stored.info.labels.get(SEQSERVE_LABEL) != "true":
            continue
        when = stored.info.creation_time.astimezone(timezone.utc)
        stored_at, precise = when.isoformat(timespec="seconds"), when.isoformat(timespec="microseconds")
        try:
            _, card, _ = read_card(str(stored.tag))
        except ArtifactError as err:
            found.append(ArtifactInfo(str(stored.tag), None, str(err).removeprefix(f"{stored.tag}: "), stored_at, precise))
            continue
        found.append(ArtifactInfo(str(stored.tag), card, "", card.created or stored_at, precise))
    return sorted(found, key=lambda info: (info.created, info.stored), reverse=True)


def newest_versions(names: Iterable[str] = ()) -> dict[str, ArtifactInfo]:
    """The newest stored version of every seqserve model name (of ``names`` when given), readable or not."""
    newest: dict[str, ArtifactInfo] = {}
    for info in list_artifacts(names):  # newest first
        newest.setdefault(info.name, info)
    return newest


def _stored(names: Iterable[str]) -> list:
    """The store's models: all of them, or every version of each of ``names`` (none for a name not stored)."""
    names = list(names)
    if not names:
        return bentoml.models.list()
    found = []
    for name in names:
        try:
            found += bentoml.models.list(name)
        except bentoml.exceptions.NotFound:
            pass
    return found
