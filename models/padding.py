"""Turning a list of variable-length sequences into one padded batch (shared by training and serving)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def pad_sequences(sequences: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad ``sequences`` (each ``(T_i, F)``) at the end into one batch.

    Returns ``x`` of shape ``(B, max T_i, F)`` float32 and ``lengths`` of shape ``(B,)`` int64 on the CPU,
    which is what :class:`models.recurrent.RecurrentEncoder` packs with.
    """
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    batch = np.zeros((len(sequences), int(lengths.max()), sequences[0].shape[1]), dtype=np.float32)
    for row, seq in enumerate(sequences):
        batch[row, : len(seq)] = seq
    return torch.from_numpy(batch), torch.from_numpy(lengths)
