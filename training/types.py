"""Types both trainers share: the network flags and what a run returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class NetworkOptions:
    """The architecture flags shared by both tasks."""

    arch: str = "gru"
    hidden_size: int = 64
    num_layers: int = 2
    dropout: float = 0.1
    bidirectional: bool = False


@dataclass
class RunResult:
    """What a training run produced."""

    tag: str | None  # None when the model was not stored (--no-save, --dry-run)
    test: dict[str, float]
    baselines: dict[str, dict[str, float]]
    report_dir: Path
    warnings: list[str] = field(default_factory=list)  # human sentences; empty when the model beats its baseline
    training: dict[str, Any] = field(default_factory=dict)  # the training record (recipe, epochs, seconds)
    data: dict[str, Any] = field(default_factory=dict)  # the card's data record (source, series, windows)
