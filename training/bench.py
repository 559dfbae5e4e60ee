"""``seqserve-train bench``: the default recipe on every built-in dataset (and given files), against every baseline.

    seqserve-train bench                                  # everything, seed 0 -> training/BENCHMARKS.md
    seqserve-train bench --datasets synthetic --seeds 0,1 --output /tmp/bench.md
    seqserve-train bench --datasets none --forecast-data sales.csv --classify-data train.csv

Each run is the CLI's own ``classify``/``forecast`` command with default flags plus ``--no-save``, so
the table measures exactly what a user gets, and nothing is stored. Built-in forecasting sets use
``--horizon 12``; files use ``--horizon`` below.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import NormalDist
from typing import Callable

import numpy as np
import torch

from training import datasets
from training.metrics import BASELINE_NAMES
from training.types import RunResult

DEFAULT_OUTPUT = Path(__file__).parent / "BENCHMARKS.md"
CLASSIFY_BASELINES = ["majority_class", "dtw_1nn"]
ETS_MARGIN = 1.05  # the target: within 5% of ETS's MASE
FORECAST_BASELINES = ["naive", "seasonal_naive", "ets"]
# The coverage target: the 0.1-0.9 band covers 80% +- 7 points of a test part's values.
BAND_LEVEL, BAND_TOLERANCE = 0.8, 0.07
# How a test part's coverage strays by chance (``exact_band_chance``) is simulated on an AR(1) of this
# persistence: business series in levels wander (0.9: a shock's effect halves in about 7 steps).
PERSISTENCE = 0.9


def exact_band_chance(windows_per_series: int, series: int, horizon: int, *, persistence: float = PERSISTENCE,
                      reps: int = 1000, seed: int = 0) -> float:
    """The chance that a band which is exactly the data's predictive law covers ``BAND_LEVEL`` +-
    ``BAND_TOLERANCE`` of a test part of ``series`` series with ``windows_per_series`` rolling windows of
    ``horizon`` steps each: how far a test part's coverage strays by chance alone.

    The test windows of one series overlap (each value is in up to ``horizon`` of them) and a level that
    wanders carries them all above or below the band together, so a short test part covers far from its
    level even where the band is right: 18 windows of 12 steps (airline's) land within 80% +- 7 about one time
    in three. Simulated: ``reps`` draws of ``series`` independent AR(1) paths (``persistence``, unit shocks),
    each forecast from every origin with the law's own ``h``-step mean and band, coverage pooled over the series.
    """
    rng = np.random.default_rng(seed)
    z = NormalDist().inv_cdf(0.5 + BAND_LEVEL / 2)
    steps = np.arange(1, horizon + 1)
    decay = persistence ** steps  # (H,): the mean of step h is persistence ** h times the origin's value
    half_width = z * np.sqrt(np.cumsum(persistence ** (2 * (steps - 1))))  # (H,)
    stationary = 1 / np.sqrt(1 - persistence**2) if persistence < 1 else 0.0  # the paths' spread at their start
    inside = np.zeros(reps)
    for _ in range(series):
        path = np.empty((reps, windows_per_series + horizon))
        path[:, 0] = rng.standard_normal(reps) * stationary
        shocks = rng.standard_normal(path.shape)
        for t in range(1, path.shape[1]):
            path[:, t] = persistence * path[:, t - 1] + shocks[:, t]
        for origin in range(windows_per_series):  # the window forecasts steps origin + 1 .. origin + horizon
            actual = path[:, origin + 1 : origin + 1 + horizon]
            inside += (np.abs(actual - decay * path[:, [origin]]) <= half_width).sum(axis=1)
    coverage = inside / (series * windows_per_series * horizon)
    return float(np.mean(np.abs(coverage - BAND_LEVEL) <= BAND_TOLERANCE + 1e-9))


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "bench", help="benchmark the default recipe on every built-in dataset against every baseline",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    every = [*(f"classify:{n}" for n in datasets.CLASSIFICATION_DATASETS), *(f"forecast:{n}" for n in datasets.FORECAST_DATASETS)]
    parser.add_argument("--datasets", default="all", help="comma-separated built-in names (a name in both tasks runs both; "
                        "task:name picks one), 'all' or 'none' (default: all). Built-in: " + ", ".join(every))
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; every dataset runs once per seed (default: 0)")
    parser.add_argument("--classify-data", type=Path, action="append", default=[], help="a classification file to add (repeatable); 20%% is held out for testing")
    parser.add_argument("--forecast-data", type=Path, action="append", default=[], help="a forecasting file to add (repeatable)")
    parser.add_argument("--horizon", default="12", help="horizon for forecasting files and built-ins (default: 12)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"Markdown table to write (default: {DEFAULT_OUTPUT.relative_to(Path.cwd()) if DEFAULT_OUTPUT.is_relative_to(Path.cwd()) else DEFAULT_OUTPUT})")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def _selected(spec: str) -> list[tuple[str, str]]:
    """(task, name) pairs for ``--datasets``."""
    every = [("classify", n) for n in datasets.CLASSIFICATION_DATASETS] + [("forecast", n) for n in datasets.FORECAST_DATASETS]
    if spec == "all":
        return every
    if spec == "none":
        return []
    picked = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        task, _, name = item.rpartition(":")
        matches = [(t, n) for t, n in every if n == name and task in ("", t)]
        if not matches:
            raise ValueError(f"unknown bench dataset {item!r}; built-in: {', '.join(f'{t}:{n}' for t, n in every)}")
        picked += matches
    return picked


def run(args: argparse.Namespace, parser: argparse.ArgumentParser,
        train_one: Callable[[argparse.Namespace], RunResult]) -> int:
    """Train every selected dataset for every seed, write the Markdown table, print where.

    ``parser`` is the CLI's own (``training.cli.build_parser()``): every run parses its argv with it, so
    a run gets the CLI's defaults exactly. The CLI hands it in; this module never imports the CLI.
    """
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    jobs = [(task, ["--dataset", name], name) for task, name in _selected(args.datasets)]
    jobs += [("classify", ["--data", str(p)], p.name) for p in args.classify_data]
    jobs += [("forecast", ["--data", str(p)], p.name) for p in args.forecast_data]
    rows: dict[str, list[str]] = {"classify": [], "forecast": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="seqserve-bench-") as scratch:
        for task, source, label in jobs:
            for seed in seeds:
                argv = [task, *source, "--name", "bench", "--no-save", "--seed", str(seed),
                        "--report", str(Path(scratch) / f"{task}-{label}-{seed}")]
                if task == "forecast":
                    argv += ["--horizon", args.horizon]
                if args.quiet:
                    argv.append("--quiet")
                print(f"bench: {task} {label} seed {seed}", flush=True)
                result = train_one(parser.parse_args(argv))
                rows[task].append(_row(task, label, seed, result, int(args.horizon)))
                print("bench: " + " | ".join(rows[task][-1]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(_markdown(rows, seeds, time.perf_counter() - started, args))
    print(f"wrote {args.output}")
    return 0


def _fmt(value: float | None) -> str:
    return "skipped" if value is None else f"{value:.3f}"


def _row(task: str, label: str, seed: int, result: RunResult, horizon: int) -> list[str]:
    recipe = result.training.get("recipe", {})
    key = "accuracy" if task == "classify" else "mase"
    names = CLASSIFY_BASELINES if task == "classify" else FORECAST_BASELINES
    scores = [result.baselines.get(n, {}).get(key) for n in names]
    simple = [s for s in scores[: 1 if task == "classify" else 2] if s is not None]
    strong = scores[-1]
    if task == "classify":
        beats = result.test[key] > max(simple)
        reaches = strong is not None and result.test[key] >= strong
        served = recipe.get("family", {}).get("served", "network")
        setup = "1-NN DTW" if served == "dtw_1nn" else (
            f"{'' if served == 'network' else served + ', '}stride {recipe.get('conv_stride')}, "
            f"{'holdout' if 'held-out' in str(recipe.get('validation')) else 'no val'}")
        cv = recipe.get("family", {}).get("training_set_accuracy", {})
        if len(cv) == 2:
            setup += f" (train CV: networks {cv['networks']:.2f}, DTW {cv['dtw_1nn']:.2f})"
    else:
        beats = result.test[key] < min(simple)
        reaches = strong is not None and result.test[key] <= ETS_MARGIN * strong
        setup = (f"{recipe.get('evaluation')}, lookback {recipe.get('lookback')}, season {recipe.get('season')}, "
                 f"{recipe.get('transform')}, {_networks(recipe)}")
        if recipe.get("series_skipped"):
            setup += f", {recipe['series_skipped']} skipped"
        ets = result.baselines.get("ets", {})
        band = next((k for k in result.test if k.startswith("coverage_")), None)
        calibration = [_fmt(result.test.get(band)), _fmt(ets.get(band)), _fmt(result.test.get("mean_wql")),
                       _fmt(ets.get("mean_wql")), _chance(result.data, horizon) if band else "n/a"]
        return [label, str(seed), setup, f"**{result.test[key]:.3f}**", *map(_fmt, scores),
                "yes" if beats else "**no**", "n/a" if strong is None else "yes" if reaches else "**no**",
                *calibration, f"{result.training.get('seconds', 0):.0f}"]
    return [label, str(seed), setup, f"**{result.test[key]:.3f}**", *map(_fmt, scores),
            "yes" if beats else "**no**", "n/a" if strong is None else "yes" if reaches else "**no**",
            f"{result.training.get('seconds', 0):.0f}", f"{result.training.get('seconds_per_epoch', 0):.2f}",
            str(result.training.get("epochs_run"))]


def _chance(data: dict, horizon: int) -> str:
    """``exact_band_chance`` for the run's test part (its windows shared out evenly over its series; several
    target channels count as one, which the chance overstates a little)."""
    series, windows = data.get("series"), data.get("n_test_windows")
    if not series or not windows:
        return "n/a"
    return f"{exact_band_chance(max(1, round(windows / series)), series, horizon):.2f}"


def _networks(recipe: dict) -> str:
    if str(recipe.get("networks", "")).startswith("trained"):
        members = recipe.get("members")
        return f"{members} network{'' if members == 1 else 's'}"
    return "start only"


def _markdown(rows: dict[str, list[list[str]]], seeds: list[int], seconds: float, args) -> str:
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    lines = [
        "# Training quality benchmark",
        "",
        "The default recipe (CLI default flags, `--no-save`) on every built-in dataset, against every baseline.",
        f"Written by `seqserve-train bench --datasets {args.datasets} --seeds {','.join(map(str, seeds))}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d}: {platform.machine()}, {os.cpu_count()} CPU cores (shared), "
        f"torch {torch.__version__} with {torch.get_num_threads()} thread(s) (OMP_NUM_THREADS={threads}), "
        f"Python {platform.python_version()}; {seconds / 60:.1f} minutes in all.",
        "",
        "Train s counts the training loop only (not the baselines). Targets: classifiers beat the majority class "
        "and reach 1-NN DTW; forecasters beat naive and seasonal naive (MASE, lower is better), come within "
        "5% of ETS and beat it on average, cover 80% ± 7 points of the test values with their 0.1-0.9 band, "
        "and have a mean weighted quantile loss (wQL) no worse than ETS's. `skipped`: the baseline is past its "
        "size cap or does not apply (see `training/baselines.py`).",
        "",
    ]
    if rows["classify"]:
        head = ["dataset", "seed", "recipe", "accuracy", *(BASELINE_NAMES[n] for n in CLASSIFY_BASELINES),
                "beats majority", "reaches 1-NN DTW", "train s", "s/epoch", "epochs"]
        lines += ["## Classification (test accuracy)", "", _table(head, rows["classify"]), ""]
    if rows["forecast"]:
        head = ["dataset", "seed", "recipe", "MASE", *(BASELINE_NAMES[n] for n in FORECAST_BASELINES),
                "beats naive/seasonal naive", "within 5% of ETS", "0.1-0.9 coverage", "ETS coverage", "wQL",
                "ETS wQL", "chance an exact band is in 80 ± 7", "train s"]
        lines += ["## Forecasting (test MASE, horizon " + args.horizon + ")", "", _table(head, rows["forecast"]), "",
                  _forecast_summary(rows["forecast"]), ""]
    return "\n".join(lines)


def _forecast_summary(rows: list[list[str]]) -> str:
    """The averages the targets name: MASE against ETS's, and coverage and wQL over the rows with both."""
    def mean(column: int) -> float:
        values = [float(row[column].strip("*")) for row in rows if row[column] not in ("skipped", "n/a")]
        return float(sum(values) / len(values)) if values else float("nan")
    both = [row for row in rows if row[6] != "skipped"]
    mase_both = sum(float(r[3].strip("*")) for r in both) / max(len(both), 1)
    ets_both = sum(float(r[6]) for r in both) / max(len(both), 1)
    summary = (f"Mean MASE over the {len(both)} rows with ETS: **{mase_both:.3f}** against ETS's {ets_both:.3f}. "
               f"Mean 0.1-0.9 coverage {mean(9):.3f} (ETS {mean(10):.3f}); mean wQL {mean(11):.4f} (ETS {mean(12):.4f}).")
    banded = [row for row in rows if row[13] != "n/a"]  # rows with a 0.1-0.9 band
    chances = [float(row[13]) for row in banded]
    inside = [row for row in banded if abs(float(row[9]) - BAND_LEVEL) <= BAND_TOLERANCE + 1e-9]
    if banded:
        summary += (f" The band covers {BAND_LEVEL:.0%} ± {BAND_TOLERANCE * 100:.0f} points on {len(inside)} of "
                    f"{len(banded)} rows; a band that is exactly the predictive law of the data, if each series were "
                    f"an AR(1) of persistence {PERSISTENCE}, would on {sum(chances):.1f} on average, and on all "
                    f"{len(banded)} with probability {float(np.prod(chances)):.2f} (the column before train s: "
                    "`training.bench.exact_band_chance`, the test part's overlapping windows simulated).")
    return summary


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)
