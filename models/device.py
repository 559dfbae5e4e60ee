"""Choosing the torch device, in one place for training and serving."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a device; ``auto`` means CUDA when present, else CPU."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec != "cpu" and not (spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit())):
        raise ValueError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} was asked for but torch sees no CUDA GPU")
        index = int(spec[5:]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)")
    device = torch.device(spec)
    log.info("using device %s", device)
    return device
