"""Several :class:`~models.recurrent.SequenceClassifier` networks stored and served as one model."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.recurrent import SequenceClassifier


class ClassifierEnsemble(nn.Module):
    """``members`` classifiers of one configuration; the answer is the mean of their class probabilities.

    The classify recipe trains one member per cross-validation fold of a small training set
    (``training.classify``). Every other argument is a :class:`SequenceClassifier`'s; the stored
    hyper-parameters are a :class:`~models.recurrent.ClassifierConfig`'s plus ``members``.
    """

    def __init__(self, members: int, cell: str = "gru", **classifier):
        super().__init__()
        if members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        self.members = nn.ModuleList(SequenceClassifier(cell=cell, **classifier) for _ in range(members))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, T, F) zero-padded after each length, lengths: (B,) int64 on CPU or None -> logits: (B, C)
        log_probs = torch.stack([F.log_softmax(m(x, lengths), dim=-1) for m in self.members])  # (K, B, C)
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))  # log of the mean probability
