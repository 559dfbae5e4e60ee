"""Train a many-to-one sequence classifier, compare it with its baselines, and store it.

The default recipe (every choice is recorded in the card's ``training["recipe"]`` and the report):

* inputs standardised with the training set's statistics *and* per sequence (``instance_norm``), so
  both level and shape are visible whatever the data's scaling;
* a causal convolutional front end that max-pools long sequences down to at most ~128 steps
  (``LONG_SEQUENCE_STEPS``): long sequences train in seconds an epoch and the recurrence sees
  local patterns rather than single samples;
* batch and epochs sized to the data (``training.loop.sized_for``, ~1,200 optimiser steps);
* no validation split below ``HOLDOUT_MIN_SEQUENCES`` training sequences: a handful of held-out
  sequences makes early stopping pick noise (a 36-sequence set kept a model that had learned nothing),
  so small sets train on everything for the whole one-cycle schedule and keep the last epoch;
* below ``SMALL_SET_SEQUENCES`` training sequences (``--family auto``), ``FOLDS`` networks, one per
  stratified fold, each trained on the other folds, and 1-NN DTW are both scored on the training set:
  the networks on the fold each one never saw, 1-NN DTW leaving one sequence out at a time. The better
  of the two is served (the networks together, as one :class:`~models.ensemble.ClassifierEnsemble`
  averaging their probabilities; 1-NN DTW as a :class:`~models.neighbours.DTWNearestNeighbour`),
  1-NN DTW on a tie. The card's ``training["recipe"]["family"]`` records both scores and the choice.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models import ClassifierConfig, ClassifierEnsemble, DTWNearestNeighbour, NeighbourConfig, create_model
from models.artifact import ModelCard, save_artifact
from models.neighbours import distance_floor, log_class_distances
from models.padding import pad_sequences
from training import baselines as strong, distributed, report
from training.data import SequenceDataset, fingerprint
from training.loop import History, TrainConfig, fit, seed_everything, sized_for
from training.metrics import classification_metrics, compare_with_baselines, majority_class_baseline
from training.read_classification import check_compatible
from training.types import NetworkOptions, RunResult

log = logging.getLogger(__name__)

LONG_SEQUENCE_STEPS = 128  # the front end pools the longest training sequence down to about this
HOLDOUT_MIN_SEQUENCES = 500  # below this, no validation split (see the module docstring)
TARGET_STEPS = 1200  # optimiser steps when epochs are left to the recipe
# Below this, --family auto weighs a fold ensemble against 1-NN DTW. At 67 sequences (Italy power demand)
# one network reached 0.946 where 1-NN DTW reaches 0.950; cross-validated, DTW scored 0.955 against 0.896
# and is served (0.950). At 50 (GunPoint) the ensemble scores 1.00 against 0.82 and serves 0.967 (one
# network: 0.973; DTW 0.907). Both cost seconds of DTW at these sizes.
SMALL_SET_SEQUENCES = 100
FOLDS = 4  # networks in that ensemble: one per fold
# Optimiser steps of each of those networks. Half a lone network's (600) took ArrowHead's 36 sequences of 251 steps
# to 289-325 s, near the 5 minutes a dataset may take on one core; a third took 205 s with the same choices and
# accuracies or better on the four small built-in sets (GunPoint 0.953 -> 0.967; ArrowHead, BasicMotions and
# Italy power demand unchanged; each 34-38% faster).
FOLD_STEPS = TARGET_STEPS // 3
FAMILIES = ("auto", "network", "ensemble", "dtw_1nn")


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, val): ``fraction`` of every class goes to validation, at least one per class with ≥2 rows."""
    rng = np.random.default_rng(seed)
    fit_rows, val_rows = [], []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(max(1, round(fraction * len(rows))), len(rows) - 1) if len(rows) > 1 else 0
        val_rows.extend(rows[:n_val])
        fit_rows.extend(rows[n_val:])
    return np.sort(np.asarray(fit_rows, dtype=np.int64)), np.sort(np.asarray(val_rows, dtype=np.int64))


@torch.no_grad()
def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """``folds`` disjoint sorted index arrays covering every row, each class dealt over them in turn."""
    rng = np.random.default_rng(seed)
    dealt: list[list[int]] = [[] for _ in range(folds)]
    start = 0
    for c in np.unique(labels):
        for i, row in enumerate(rng.permutation(np.flatnonzero(labels == c))):
            dealt[(start + i) % folds].append(int(row))
        start += int((labels == c).sum())  # the next class starts where this one stopped: folds stay even
    return [np.sort(np.asarray(rows, dtype=np.int64)) for rows in dealt]


def predict_labels(model: torch.nn.Module, sequences: list[np.ndarray], device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Arg-max class of every sequence: ``(N,)``."""
    model.eval()
    out = []
    for i in range(0, len(sequences), batch_size):
        x, lengths = pad_sequences(sequences[i : i + batch_size])
        out.append(model(x.to(device), lengths).argmax(dim=-1).cpu().numpy())
    return np.concatenate(out)


def augment(seq: np.ndarray, std: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A training view of ``seq`` (T, F): a random window of 80-100% of it, plus noise at 5% of each feature's std.

    Window slicing and jitter are the two augmentations that help most across the UCR archive (Iwana &
    Uchida 2021); without them the network memorises small sets within ~60 epochs (training loss ~0).
    """
    length = len(seq)
    keep = max(1, int(round(length * rng.uniform(0.8, 1.0))))
    start = int(rng.integers(0, length - keep + 1))
    view = seq[start : start + keep]
    return (view + rng.normal(0.0, 0.05, size=view.shape) * std).astype(np.float32)


def classifier_config(train: SequenceDataset, network: NetworkOptions, instance_norm: str = "sequence") -> ClassifierConfig:
    """The network the recipe builds for ``train``."""
    longest = max(len(s) for s in train.sequences)
    return ClassifierConfig(
        n_features=train.n_features,
        n_classes=train.n_classes,
        hidden_size=network.hidden_size,
        num_layers=network.num_layers,
        dropout=network.dropout,
        bidirectional=network.bidirectional,
        instance_norm=instance_norm,
        conv_stride=max(1, math.ceil(longest / LONG_SEQUENCE_STEPS)),
    )


def train_network(
    train: SequenceDataset,
    fit_rows: np.ndarray,
    val_rows: np.ndarray,
    model_name: str,
    hparams: ClassifierConfig,
    stats: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    device: torch.device,
    target_steps: int = TARGET_STEPS,
) -> tuple[torch.nn.Module, History, TrainConfig]:
    """One network trained on ``train``'s ``fit_rows`` (early stopping on ``val_rows`` when there are any).

    ``stats`` are the per-feature (mean, std) it standardises with; returns it with its history and the
    settings it trained with (batch and epochs sized to ``fit_rows`` when left as None).
    """
    mean, std = stats
    model = create_model(model_name, **dataclasses.asdict(hparams))
    model.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
    model.feature_std.copy_(torch.as_tensor(std, dtype=torch.float32))
    model.to(device)
    rng = np.random.default_rng(config.seed + distributed.rank())  # under torchrun, each rank draws its own views

    def make_batch(indices: np.ndarray, is_train: bool):
        rows = fit_rows[indices] if is_train else val_rows[indices]
        seqs = [train.sequences[i] for i in rows]
        x, lengths = pad_sequences([augment(s, std, rng) for s in seqs] if is_train else seqs)
        return x.to(device), lengths, torch.as_tensor(train.labels[rows], device=device)

    def loss_fn(model, batch):
        x, lengths, y = batch
        return F.cross_entropy(model(x, lengths), y)

    if config.batch_size is None:  # about ten batches an epoch, 8 to 32 sequences each
        config = dataclasses.replace(config, batch_size=int(np.clip(len(fit_rows) // 10, 8, 32)))
    config = sized_for(config, len(fit_rows), target_steps=target_steps)
    history = fit(model, len(fit_rows), len(val_rows), make_batch, loss_fn, config)
    return model, history, config


def dtw_classifier(train: SequenceDataset, rows: np.ndarray, sharpness: float = 1.0) -> DTWNearestNeighbour:
    """1-NN DTW over ``train``'s ``rows``, as a module."""
    references, lengths = pad_sequences([train.sequences[i] for i in rows])
    hparams = NeighbourConfig(train.n_features, train.n_classes, len(rows), references.shape[1], sharpness)
    return DTWNearestNeighbour(**dataclasses.asdict(hparams)).remember(
        references, lengths, torch.as_tensor(train.labels[rows]))


# The sharpness values fit_sharpness tries: up to 32, where a class 10% nearer than the next gets 0.95. Of those
# whose leave-one-out log loss is within SHARPNESS_TOLERANCE nats of the best, the least sharp: a set its
# leave-one-out answers get all right says only that sharper is better, without end, and the grid's end would
# give a test miss 20% nearer the wrong class 0.997.
SHARPNESS_GRID = tuple(2.0 ** np.arange(-2, 5.01, 0.25))
SHARPNESS_TOLERANCE = 0.01


@torch.no_grad()
def dtw_leave_one_out(train: SequenceDataset) -> tuple[float, float]:
    """Accuracy of 1-NN DTW on the training set, each sequence classified by its nearest other one, and the
    sharpness of its probabilities fitted to those answers (``fit_sharpness``)."""
    model = dtw_classifier(train, np.arange(len(train)))
    x, lengths = pad_sequences(train.sequences)
    distances = model.distances(x, lengths)  # (N, N)
    distances.fill_diagonal_(torch.inf)
    nearest = distances.argmin(dim=1).numpy()
    return float(np.mean(train.labels[nearest] == train.labels)), fit_sharpness(model.class_distances(distances),
                                                                                 train.labels)


def fit_sharpness(class_distances: torch.Tensor, labels: np.ndarray) -> float:
    """The least ``DTWNearestNeighbour.sharpness`` in ``SHARPNESS_GRID`` whose log loss on held-out answers is within
    ``SHARPNESS_TOLERANCE`` of the lowest: ``class_distances`` (N, C), each sequence's nearest distance to each
    class leaving it out, ``labels`` (N,). Left out of the fit (1.0 if none is left): a sequence alone in its class,
    which has no distance to it, and one with an exact duplicate (a distance at the floor), whose distances' ratio
    no sharpness fits (one duplicated in another class made it 0.25, every answer near even)."""
    log_d = log_class_distances(class_distances)  # (N, C), floored as the served logits are
    truth = torch.as_tensor(labels)
    duplicated = (class_distances <= distance_floor(class_distances)).any(dim=1)
    usable = torch.isfinite(log_d.gather(1, truth[:, None])[:, 0]) & ~duplicated
    if not usable.any():
        return 1.0
    log_d, truth = log_d[usable], truth[usable]
    losses = [-torch.log_softmax(-s * log_d, dim=1).gather(1, truth[:, None]).mean().item() for s in SHARPNESS_GRID]
    return float(min(s for s, loss in zip(SHARPNESS_GRID, losses) if loss <= min(losses) + SHARPNESS_TOLERANCE))


def fold_ensemble(
    train: SequenceDataset,
    network: NetworkOptions,
    hparams: ClassifierConfig,
    stats: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    device: torch.device,
) -> tuple[ClassifierEnsemble, float, History, TrainConfig]:
    """``FOLDS`` networks, each trained on all folds but one; their ensemble and their held-out accuracy.

    Each member gets ``FOLD_STEPS``, a third of a lone network's optimiser steps, so the ensemble costs about
    one and a third networks' time.
    """
    members, histories, right = [], [], 0
    for k, held in enumerate(stratified_folds(train.labels, FOLDS, config.seed)):
        rows = np.setdiff1d(np.arange(len(train)), held)
        member_config = dataclasses.replace(config, seed=config.seed + k)
        seed_everything(member_config.seed)
        model, history, trained = train_network(train, rows, np.zeros(0, dtype=np.int64), f"{network.arch}_classifier",
                                                hparams, stats, member_config, device, FOLD_STEPS)
        if len(held):
            right += int(np.sum(predict_labels(model, [train.sequences[i] for i in held], device) == train.labels[held]))
        members.append(model)
        histories.append(history)
    ensemble = ClassifierEnsemble(len(members), network.arch, **dataclasses.asdict(hparams)).to(device)
    for slot, member in zip(ensemble.members, members):
        slot.load_state_dict(member.state_dict())
    history = histories[0]
    history.seconds = sum(h.seconds for h in histories)
    return ensemble, right / len(train), history, dataclasses.replace(trained, seed=config.seed)


def data_warnings(train: SequenceDataset, test: SequenceDataset) -> list[str]:
    """Sentences on what the data leaves the test scores unable to say: classes with one training sequence
    (cross-validation and 1-NN DTW's leave-one-out score them 0 whatever the model), classes no test sequence
    holds, a test set that is the training set, and labels that differ only in case or surrounding spaces
    (a spreadsheet's ``walking`` and ``walking `` are two classes, kept as written)."""
    out = []
    alike: dict[str, list[str]] = {}
    for name in train.label_names:
        alike.setdefault(name.strip().casefold(), []).append(name)
    if (twins := [names for names in alike.values() if len(names) > 1]):
        out.append(f"{len(twins)} group(s) of labels differ only in case or surrounding spaces, so each is its own "
                   f"class: {'; '.join(_some(names) for names in twins[:3])}; write each class one way if they are one")
    counts = np.bincount(train.labels, minlength=train.n_classes)
    if (single := [train.label_names[c] for c in np.flatnonzero(counts == 1)]):
        out.append(f"{len(single)} of {train.n_classes} classes have a single training sequence ({_some(single)}): "
                   f"the cross-validated scores that choose a small set's model cannot score them")
    if (untested := [train.label_names[c] for c in np.setdiff1d(np.arange(train.n_classes), test.labels)]):
        out.append(f"{len(untested)} of {train.n_classes} classes have no test sequence ({_some(untested)}): "
                   f"the test scores say nothing about them")
    if fingerprint(train) == fingerprint(test):
        out.append("the test set is the training set: its scores measure what the model memorised, not how it "
                   "does on sequences it has not seen")
    return out


def _some(names: list[str], limit: int = 5) -> str:
    return ", ".join(repr(n) for n in names[:limit]) + (", ..." if len(names) > limit else "")


def train_classifier(
    train: SequenceDataset,
    test: SequenceDataset,
    *,
    name: str,
    network: NetworkOptions,
    config: TrainConfig,
    device: torch.device,
    report_dir: Path,
    val_fraction: float | None = None,
    save: bool = True,
    strong_baselines: bool = True,
    instance_norm: str = "sequence",
    family: str = "auto",
) -> RunResult | None:
    """The whole classification run: split, normalise, train, evaluate, compare, store, report.

    ``val_fraction`` None lets the recipe choose (a 20% split from ``HOLDOUT_MIN_SEQUENCES`` on, else none).
    ``family``: one of ``FAMILIES`` (see the module docstring). Returns None on torchrun ranks other
    than 0, which only train.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    test = check_compatible(train, test)  # features in the training order
    seed_everything(config.seed)
    if family == "auto":
        family = "network" if len(train) >= SMALL_SET_SEQUENCES else "auto"
    if val_fraction is None:
        val_fraction = 0.2 if len(train) >= HOLDOUT_MIN_SEQUENCES and family == "network" else 0.0
    if val_fraction > 0 and family != "network":
        raise ValueError(f"--val-fraction needs --family network; {family} trains on every training sequence")
    if val_fraction > 0:
        fit_rows, val_rows = stratified_split(train.labels, val_fraction, config.seed)
    else:
        fit_rows, val_rows = np.arange(len(train)), np.zeros(0, dtype=np.int64)
    stacked = np.concatenate([train.sequences[i] for i in fit_rows])  # every valid step: (sum T_i, F)
    mean, std = stacked.mean(axis=0), stacked.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    hparams = classifier_config(train, network, instance_norm)
    recipe: dict = {"instance_norm": hparams.instance_norm, "conv_stride": hparams.conv_stride,
                    "augmentation": "random 80-100% window + 5% noise"}
    started = time.perf_counter()

    if family == "network":
        model_name = f"{network.arch}_classifier"
        model, history, config = train_network(train, fit_rows, val_rows, model_name, hparams, (mean, std), config, device)
        recipe["family"] = {"served": "network", "why": f"{len(train)} training sequences (cross-validation below "
                            f"{SMALL_SET_SEQUENCES})" if len(train) >= SMALL_SET_SEQUENCES else "asked for (--family network)"}
    else:
        scores: dict[str, float] = {}
        if family in ("auto", "ensemble"):
            model, scores["networks"], history, config = fold_ensemble(train, network, hparams, (mean, std), config, device)
            model_name = f"{network.arch}_ensemble"
        if family in ("auto", "dtw_1nn"):
            scores["dtw_1nn"], sharpness = dtw_leave_one_out(train)
        # A tie goes to 1-NN DTW: the reference the networks are held to, and the same answer every run.
        if family == "dtw_1nn" or (family == "auto" and scores["dtw_1nn"] >= scores["networks"]):
            model, model_name = dtw_classifier(train, fit_rows, sharpness).to(device), "dtw_1nn"
            history = history if family == "auto" else History()
        if family == "auto":
            better = "dtw_1nn" if model_name == "dtw_1nn" else "networks"
            why = (f"fewer than {SMALL_SET_SEQUENCES} training sequences: {FOLDS}-fold accuracy of the networks "
                   f"{scores['networks']:.3f}, leave-one-out accuracy of 1-NN DTW {scores['dtw_1nn']:.3f}; "
                   + ("1-NN DTW is as high or higher" if better == "dtw_1nn" else "the networks are higher"))
        else:
            why = f"asked for (--family {family})"
        recipe["family"] = {"served": "dtw_1nn" if model_name == "dtw_1nn" else f"ensemble of {FOLDS} networks",
                            "why": why, "training_set_accuracy": scores}
        if model_name == "dtw_1nn":
            recipe["family"]["probabilities"] = (f"each class's share of its nearest DTW distance ^ -{model.sharpness:.3g}, "
                                                 "the power fitted to the leave-one-out answers")
    seconds = time.perf_counter() - started
    if model_name == "dtw_1nn":
        hparams_out = dataclasses.asdict(NeighbourConfig(train.n_features, train.n_classes, len(fit_rows),
                                                         int(model.references.shape[1]), model.sharpness))
        normalization = {"kind": "none", "why": "1-NN DTW compares the values as given, as the baseline does"}
        recipe = {"family": recipe["family"]}
    else:
        hparams_out = dataclasses.asdict(hparams)
        if model_name.endswith("_ensemble"):
            hparams_out["members"] = len(model.members)
        normalization = {"kind": "feature_standardization", "mean": mean.tolist(), "std": std.tolist(),
                         "instance_norm": hparams.instance_norm}
        recipe.update({
            "validation": f"{len(val_rows)} held-out sequences, early stopping" if len(val_rows)
            else f"none: fewer than {HOLDOUT_MIN_SEQUENCES} training sequences; trains on all, keeps the last epoch",
            "batch_size": config.batch_size, "epochs": config.epochs, "lr": config.lr,
        })
    log.info("recipe: %s", recipe)
    if not distributed.is_main():
        return None  # another torchrun rank: it helped train; rank 0 evaluates, stores and reports

    test_metrics = classification_metrics(test.labels, predict_labels(model, test.sequences, device))
    baselines = {"majority_class": majority_class_baseline(train.labels, test.labels)}
    notes = {"majority_class": "always the most frequent training class"}
    if strong_baselines:
        dtw, notes["dtw_1nn"] = strong.dtw_1nn(train.sequences, train.labels, test.sequences, test.labels)
        if dtw is not None:
            baselines["dtw_1nn"] = dtw
    else:
        notes["dtw_1nn"] = "skipped: dry run"
    beats, warnings = compare_with_baselines("classify", test_metrics, baselines)
    warnings = data_warnings(train, test) + warnings
    for sentence in warnings:
        log.warning("%s: %s", name, sentence)
    metrics = {"test": test_metrics, "baselines": baselines, "baseline_notes": notes,
               "beats_baseline": beats, "warnings": warnings}

    card = ModelCard(
        task="classify",
        model_name=model_name,
        hparams=hparams_out,
        features=train.feature_names,
        labels=train.label_names,
        max_length=int(max(len(s) for s in train.sequences)),
        normalization=normalization,
        metrics=metrics,
        data={
            "train_source": train.source,
            "test_source": test.source,
            "train_fingerprint": fingerprint(train),
            "n_train": len(fit_rows),
            "n_val": len(val_rows),
            "n_test": len(test.sequences),
        },
        training={**dataclasses.asdict(config), **history.summary(), "seconds": round(seconds, 2),
                  "device": str(device), "val_fraction": val_fraction, "recipe": recipe},
    )
    tag = save_artifact(name, model, card) if save else None
    report_dir.mkdir(parents=True, exist_ok=True)
    report.write_metrics(report_dir, "classify", tag or f"{name}:unsaved", metrics, recipe)
    report.plot_history(report_dir, history)
    return RunResult(tag, test_metrics, baselines, report_dir, warnings, card.training, card.data)
