"""The garbage collector's passes in a server's processes, timed by this folder's ``sitecustomize``.

:func:`server_env` is what a server started by the soak gets with ``--gc-pauses``; :func:`read` and
:func:`summary` turn the files its processes wrote into pauses per worker and generation.
"""

from __future__ import annotations

import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent


def server_env(folder: Path) -> dict[str, str]:
    """Environment for a server whose processes write their passes into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return {"PYTHONPATH": str(HERE), "SEQSERVE_GC_PAUSES_DIR": str(folder)}


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
