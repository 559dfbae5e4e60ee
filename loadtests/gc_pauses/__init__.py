"""The garbage collector's passes, and the stretches a process did not run at all, timed by this folder's
``sitecustomize`` in the soak's server and load generator.

:func:`watched_env` is what those processes get with ``--gc-pauses``; :func:`read` and :func:`summary` turn
the files they wrote into pauses per process and generation, :func:`read_stalls` into their stalls.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent


def watched_env(folder: Path) -> dict[str, str]:
    """Environment for processes (a server, a load generator) that write their passes and stalls into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "SEQSERVE_GC_PAUSES_DIR": str(folder)}


def read(folder: Path, pid: int, since: float = 0.0) -> list[tuple[float, int, float]]:
    """Passes of process ``pid`` that began at or after unix time ``since``: (unix time, generation, milliseconds)."""
    path = folder / f"{pid}.csv"
    if not path.exists():
        return []
    passes = []
    for line in path.read_text().splitlines():
        when, generation, ms, _collected = line.split(",")
        if float(when) >= since:
            passes.append((float(when), int(generation), float(ms)))
    return passes


def read_stalls(folder: Path, since: float = 0.0) -> dict[int, list[tuple[float, float]]]:
    """Every process's stalls that began at or after unix time ``since``: pid -> [(unix time, milliseconds)]."""
    stalls: dict[int, list[tuple[float, float]]] = {}
    for path in sorted(folder.glob("*.stalls.csv")):
        rows = [line.split(",") for line in path.read_text().splitlines()]
        stalls[int(path.name.split(".")[0])] = [(float(when), float(ms)) for when, ms in rows if float(when) >= since]
    return stalls


def summary(passes: list[tuple[float, int, float]]) -> str:
    """One line: passes, time in all, median and longest pause per generation."""
    parts = []
    for generation in (0, 1, 2):
        ms = [m for _, g, m in passes if g == generation]
        parts.append(
            f"gen{generation} {len(ms)} passes, {sum(ms):.0f} ms in all, median {statistics.median(ms):.2f} ms, "
            f"longest {max(ms):.1f} ms" if ms else f"gen{generation} 0 passes"
        )
    return "; ".join(parts)
