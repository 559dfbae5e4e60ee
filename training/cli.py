"""``seqserve-train``: train a classifier or forecaster and store it; list stored models.

    seqserve-train classify --dataset gunpoint --arch gru --name gunpoint-gru
    seqserve-train classify --data train.csv --test-data test.csv --arch lstm --name my-clf
    seqserve-train forecast --data sales.parquet --arch gru --horizon 12 --quantiles 0.1,0.5,0.9 --name sales-gru
    seqserve-train list
    seqserve-train bench --datasets synthetic --seeds 0,1
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime
from pathlib import Path

from models import CELLS
from models.normalization import INSTANCE_NORMS
from models.artifact import NAME_RULE, ArtifactError, check_name, list_artifacts
from models.device import resolve_device
from training import bench, datasets, distributed, report
from training.classify import FAMILIES, SMALL_SET_SEQUENCES, stratified_split, train_classifier
from training.data import DataError, SequenceDataset
from training.forecast import PROTOCOLS, train_forecaster
from training.loop import TrainConfig
from training.read_classification import read_classification
from training.read_series import read_series
from training.types import NetworkOptions, RunResult


def _quantiles(text: str) -> list[float]:
    if text.strip().lower() == "none":
        return []
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--quantiles takes numbers like 0.1,0.5,0.9, got {text!r}") from None
    if any(not 0 < q < 1 for q in values):
        raise argparse.ArgumentTypeError(f"every quantile must lie strictly between 0 and 1, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return int(text)


def _model_name(text: str) -> str:
    try:
        return check_name(text)
    except ValueError as err:  # argparse prints an ArgumentTypeError's own words, after "argument --name:"
        raise argparse.ArgumentTypeError(str(err)) from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


# Both tasks size batch and epochs to the data (None = auto, see training.classify / training.loop.sized_for):
# classification sets run from tens to thousands of sequences, forecasting from tens to many thousands of windows.
CLASSIFY_DEFAULTS = TrainConfig(epochs=None, batch_size=None, patience=None)
FORECAST_DEFAULTS = TrainConfig(epochs=None, batch_size=None, patience=None)
PROGRESS_SECONDS = 5.0  # a plain progress line this often when stderr is not a terminal
RUNS = Path("runs")  # the report folders of runs without --report


def _add_common(parser: argparse.ArgumentParser, defaults: TrainConfig, bidirectional: bool) -> None:
    """Flags every training task has: data source, network, optimisation, output."""
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a built-in dataset (see the list below)")
    source.add_argument("--data", type=Path, help="your training data: CSV, Parquet or (classify) NPZ")

    net = parser.add_argument_group("network")
    net.add_argument("--arch", choices=sorted(CELLS), default="gru", help="recurrent cell type (default: gru)")
    net.add_argument("--hidden-size", type=_positive_int, default=64, help="hidden units per layer (default: 64)")
    net.add_argument("--num-layers", type=_positive_int, default=2, help="stacked recurrent layers (default: 2)")
    net.add_argument("--dropout", type=float, default=0.1, help="dropout between layers and before the head (default: 0.1)")
    net.add_argument(
        "--bidirectional", action=argparse.BooleanOptionalAction, default=bidirectional,
        help=f"read sequences in both directions (default: {'on' if bidirectional else 'off'})",
    )

    opt = parser.add_argument_group("optimisation")
    auto = "auto: sized to the data"
    opt.add_argument("--epochs", type=_positive_int, default=defaults.epochs, help=f"maximum epochs (default: {defaults.epochs or auto + ', ~1200-1500 optimiser steps'})")
    opt.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size, help=f"(default: {defaults.batch_size or auto + ': classify 8 to 32 sequences, forecast 8 to 64 windows'})")
    opt.add_argument("--lr", type=float, default=defaults.lr, help=f"peak AdamW learning rate of the one-cycle schedule (default: {defaults.lr})")
    opt.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help=f"AdamW weight decay (default: {defaults.weight_decay})")
    opt.add_argument("--patience", type=_positive_int, default=defaults.patience, help=f"stop after this many epochs without a better validation loss (default: {defaults.patience or 'a quarter of the epochs'})")
    opt.add_argument("--clip-norm", type=float, default=defaults.clip_norm, help=f"gradient clipping norm (default: {defaults.clip_norm})")
    opt.add_argument("--val-fraction", type=_fraction, default=None, help="share of the training data held out for early stopping (default: classify 0.2 from 500 sequences on, else none; forecast 0.1 under --eval windows)")
    opt.add_argument("--seed", type=int, default=0, help="random seed; the same seed repeats a CPU run exactly (default: 0)")
    opt.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto = CUDA when present)")

    out = parser.add_argument_group("output")
    out.add_argument("--name", required=True, type=_model_name, help=f"model name in the BentoML store, {NAME_RULE}; every run adds a new version")
    out.add_argument("--report", type=Path, default=None, help=f"folder for metrics.json and plots (default: {RUNS}/<name>-<time>)")
    out.add_argument("--dry-run", action="store_true", help="one epoch of two batches and no strong baselines: checks data and settings in seconds; stores nothing")
    out.add_argument("--no-save", action="store_true", help="train and report, but do not store the model")
    out.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqserve-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{classify,forecast,list,bench}")

    clf = commands.add_parser(
        "classify",
        help="train a many-to-one sequence classifier",
        description="Train a GRU/LSTM/RNN sequence classifier and store it.",
        epilog="built-in datasets: " + "; ".join(f"{k} ({v})" for k, v in datasets.CLASSIFICATION_DATASETS.items()),
    )
    # Bidirectional by default: on GunPoint a one-way GRU reached 0.76 test accuracy, a two-way one 0.97.
    _add_common(clf, CLASSIFY_DEFAULTS, bidirectional=True)
    clf.add_argument(
        "--instance-norm", choices=INSTANCE_NORMS, default="sequence",
        help="also feed each sequence standardised by its own statistics: sequence (all its steps; cannot "
        "stream), running (steps so far; can stream with --no-bidirectional) or none (default: sequence)",
    )
    clf.add_argument(
        "--family", choices=FAMILIES, default="auto",
        help=f"what to train: auto (default: one network from {SMALL_SET_SEQUENCES} training sequences on; below, "
        "networks cross-validated over folds and 1-NN DTW, serving whichever scores higher on the training set), "
        "network (one network), ensemble (the fold networks, as one model) or dtw_1nn (1-NN DTW)",
    )
    clf.add_argument("--test-data", type=Path, help="held-out test file (default: 20%% of --data, stratified)")
    clf.add_argument("--id-col", default="sample_id", help="column naming the sequence a row belongs to (default: sample_id)")
    clf.add_argument("--time-col", default="step", help="column ordering rows within a sequence (default: step)")
    clf.add_argument("--label-col", default="label", help="column holding the class label (default: label)")

    fc = commands.add_parser(
        "forecast",
        help="train a multi-horizon time-series forecaster",
        description="Train a GRU/LSTM/RNN forecaster (history -> next H steps) and store it.",
        epilog="built-in datasets: " + "; ".join(f"{k} ({v})" for k, v in datasets.FORECAST_DATASETS.items()),
    )
    _add_common(fc, FORECAST_DEFAULTS, bidirectional=False)
    fc.add_argument("--horizon", type=_positive_int, default=12, help="steps to forecast (default: 12)")
    fc.add_argument("--lookback", type=_positive_int, default=None, help="history steps the model reads (default: chosen from the data: four seasons (two past 24 steps), at least 2x horizon and 24, fewer where short series would keep too few training windows)")
    fc.add_argument("--quantiles", type=_quantiles, default=[0.1, 0.9], help="comma-separated quantile levels, calibrated on the validation windows; 0.5 is always added and is the point forecast; 'none' for a point forecaster trained on absolute error (default: 0.1,0.9)")
    fc.add_argument("--members", type=_positive_int, default=None, help="networks trained with seeds seed, seed+1, ... and averaged into one model (default: 5, fewer for large data)")
    fc.add_argument("--season", type=_positive_int, default=None, help="seasonal period for the seasonal naive baseline and MASE (default: the dataset's, else inferred)")
    fc.add_argument("--test-fraction", type=_fraction, default=0.2, help="last share of every series kept for testing under --eval windows (default: 0.2)")
    fc.add_argument(
        "--eval", choices=PROTOCOLS, default="auto",
        help="windows: rolling test windows over the last --test-fraction of every series; last-horizon: the last "
        "--horizon steps of every series (the M4/Monash protocol); auto (default): windows when every series is "
        "long enough for them, else last-horizon (a series too short for either is skipped and has no say)",
    )
    fc.add_argument("--id-col", default="series_id", help="column naming the series a row belongs to (default: series_id)")
    fc.add_argument("--time-col", default="timestamp", help="column ordering rows in time (default: timestamp)")
    fc.add_argument("--target", action="append", default=None, help="column to forecast; repeat for several (default: value); other numeric columns are past covariates")

    commands.add_parser("list", help="list stored seqserve models", description="List every seqserve model version in the BentoML store.")
    bench.add_parser(commands)
    return parser


def _config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        epochs=1 if args.dry_run else args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        patience=args.patience,
        clip_norm=args.clip_norm,
        seed=args.seed,
        max_batches=2 if args.dry_run else None,
        progress=not _quiet(args) and sys.stderr.isatty(),
        log_every=0.0 if _quiet(args) or sys.stderr.isatty() else PROGRESS_SECONDS,
    )


def _quiet(args: argparse.Namespace) -> bool:
    """No progress output: asked for, or a torchrun rank other than 0 (rank 0 speaks for the run)."""
    return getattr(args, "quiet", True) or not distributed.is_main()


def _device(args: argparse.Namespace):
    return distributed.local_device(resolve_device(args.device))


def _network(args: argparse.Namespace) -> NetworkOptions:
    return NetworkOptions(args.arch, args.hidden_size, args.num_layers, args.dropout, args.bidirectional)


def _report_dir(args: argparse.Namespace) -> Path:
    """``--report``, else a new folder inside ``runs/``: a valid ``--name`` is one plain path component."""
    return args.report or RUNS / f"{args.name}-{datetime.now():%Y%m%d-%H%M%S}"


def _split_file_dataset(data: SequenceDataset, seed: int) -> tuple[SequenceDataset, SequenceDataset]:
    """No --test-data: keep 20% of every class for testing."""
    keep, held = stratified_split(data.labels, 0.2, seed)
    if not len(held):
        raise DataError(f"{data.source}: no class has 2 sequences, so none can be held out for testing; "
                        "add sequences or give a test file with --test-data")

    def subset(rows, part):
        return SequenceDataset([data.sequences[i] for i in rows], data.labels[rows], data.label_names, data.feature_names, f"{data.source} ({part})")

    return subset(keep, "80% train split"), subset(held, "20% test split")


def run_classify(args: argparse.Namespace) -> RunResult | None:
    if args.dataset:
        train, test = datasets.load_classification(args.dataset)
    else:
        columns = {"id_col": args.id_col, "time_col": args.time_col, "label_col": args.label_col}
        train = read_classification(args.data, **columns)
        if args.test_data:
            test = read_classification(args.test_data, **columns, label_names=train.label_names)
        else:
            train, test = _split_file_dataset(train, args.seed)
    return train_classifier(
        train, test, name=args.name, network=_network(args), config=_config(args), device=_device(args),
        report_dir=_report_dir(args), val_fraction=args.val_fraction, save=not (args.no_save or args.dry_run),
        strong_baselines=not args.dry_run, instance_norm=args.instance_norm, family=args.family,
    )


def run_forecast(args: argparse.Namespace) -> RunResult | None:
    if args.dataset:
        collection = datasets.load_series(args.dataset)
    else:
        collection = read_series(args.data, id_col=args.id_col, time_col=args.time_col, targets=args.target)
    return train_forecaster(
        collection, name=args.name, network=_network(args), config=_config(args), device=_device(args),
        report_dir=_report_dir(args), lookback=args.lookback, horizon=args.horizon, quantiles=args.quantiles,
        season=args.season, evaluation=args.eval, test_fraction=args.test_fraction,
        val_fraction=args.val_fraction or 0.1, save=not (args.no_save or args.dry_run), strong_baselines=not args.dry_run,
        members=1 if args.dry_run else args.members,
    )


def run_list() -> None:
    rows = [("model", "task", "arch", "test metrics", "beats baselines", "created")]
    for info in list_artifacts():
        if info.card is None:  # shown, not hidden: the server refuses to start with it (see service.startup)
            rows.append((info.tag, "UNREADABLE", "-", info.problem, "-", info.created))
            continue
        test = info.card.metrics.get("test", {})
        keys = ("accuracy", "macro_f1") if info.card.task == "classify" else ("mase", "mae")
        metrics = " ".join(f"{k}={test[k]:.3f}" for k in keys if k in test)
        beats = {True: "yes", False: "NO (see its warnings)"}.get(info.card.metrics.get("beats_baseline"), "-")
        rows.append((info.tag, info.card.task, info.card.arch, metrics, beats, info.card.created))
    if len(rows) == 1:
        print("no seqserve models in the store; train one with `seqserve-train classify --dataset synthetic --name demo`")
        return
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(f"{str(cell):<{w}}" for cell, w in zip(row, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun only rank 0 speaks; the others show errors only (their warnings would repeat rank 0's).
    level = logging.WARNING if distributed.is_main() else logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not _quiet(args):
        logging.getLogger("training").setLevel(logging.INFO)  # the recipe and the plain progress lines
    try:
        if args.command == "list":
            run_list()
            return 0
        if args.command == "bench":
            if distributed.launched():  # its runs are separate models, each would need every rank
                raise ValueError("bench trains one process at a time; run it with python -m training bench, not torchrun")
            return bench.run(args, build_parser(), train_one)
        with distributed.session(args.device):  # a process group under torchrun; nothing in a plain run
            result = train_one(args)
    except (DataError, ArtifactError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result is None:  # a torchrun rank other than 0: it trained its shard; rank 0 reports
        return 0
    print(report.format_table(result.test, result.baselines))
    if served := served_line(result.training.get("recipe", {})):
        print(served)
    for sentence in result.warnings:
        print(f"warning: {sentence}")
    print(f"report: {result.report_dir}")
    print(f"stored: {result.tag}" if result.tag else f"not stored ({'--dry-run' if args.dry_run else '--no-save'})")
    return 0


def served_line(recipe: dict) -> str:
    """What the stored model is and why, in one line: a small classification set may be served by 1-NN DTW or
    an ensemble whatever --arch says, and a forecaster by its start alone ("" where the recipe says neither)."""
    if "family" in recipe:
        family = recipe["family"]
        name = "1-NN DTW" if family["served"] == "dtw_1nn" else family["served"]
        return f"served: {name} ({family['why']})"
    if "networks" in recipe:
        if recipe["networks"] == "trained":
            return f"served: the start ({recipe['start']}) and {recipe['members']} network(s) correcting it"
        return f"served: the start alone ({recipe['start']}); networks {recipe['networks']}"
    return ""


def train_one(args: argparse.Namespace) -> RunResult | None:
    """Run the ``classify`` or ``forecast`` command ``args`` describe (None on torchrun ranks other than 0)."""
    return run_classify(args) if args.command == "classify" else run_forecast(args)
