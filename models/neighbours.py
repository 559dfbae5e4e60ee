"""1-nearest-neighbour DTW as a torch module: the training sequences are its buffers.

1-NN DTW (full window) is the UCR/UEA archive's reference classifier and ``training.baselines`` reports
it beside every network. On some small training sets it is the better model (a 28-sequence set of
spectrograms: 1.00 against the network's 0.96), so the classify recipe can serve it
(``training.classify``). It answers through the networks' contract, ``forward(x, lengths) -> logits
(B, C)``, is stored by ``models.artifact`` like them (its buffers are its weights) and can stream.

The distance is aeon's ``dtw``: the squared Euclidean distance between two steps (summed over features),
summed along the cheapest warping path, on the values as given. It is computed one query step at a
time: row ``i`` of the DTW matrix against every reference comes from row ``i - 1`` alone,

    D[i, j] = c[i, j] + min(D[i-1, j], D[i-1, j-1], D[i, j-1])
            = S[j] + min over k <= j of (m[k] - S[k-1]),   m[k] = min(D[i-1, k], D[i-1, k-1]),

where ``S`` is the running sum of the row's costs ``c[i, :]``: a cumulative sum and a cumulative minimum,
so a row is a few vectorised operations over every (query, reference, step). A sequence is read in
``T`` rows, a stream keeps the last row (``N x L`` numbers, however long it has run), and a padded
query or reference step never enters the value read at a sequence's own last step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Rows of (query, reference, step, feature) differences one pass holds at most (float64, ~64 MB).
CHUNK_ELEMENTS = 8_000_000
# A class's nearest distance below this share of the query's mean class distance counts as this share: an exact
# duplicate (distance 0) then wins by a factor of a million, not by log(0) = -inf.
DISTANCE_FLOOR_SHARE = 1e-6


def distance_floor(nearest: torch.Tensor) -> torch.Tensor:
    """``DISTANCE_FLOOR_SHARE`` of each row's mean finite class distance (B, 1), from each class's nearest (B, C)."""
    finite = torch.isfinite(nearest)
    mean = torch.where(finite, nearest, 0.0).sum(1, keepdim=True) / finite.sum(1, keepdim=True).clamp_min(1)
    return (DISTANCE_FLOOR_SHARE * mean).clamp_min(torch.finfo(torch.float64).tiny)


def log_class_distances(nearest: torch.Tensor) -> torch.Tensor:
    """The log of each class's nearest distance (B, C), at least its row's :func:`distance_floor` (a class with no
    reference stays at +inf)."""
    return torch.log(torch.maximum(nearest, distance_floor(nearest)))


@dataclass
class NeighbourConfig:
    """Hyper-parameters of :class:`DTWNearestNeighbour`; stored as the card's ``hparams``."""

    n_features: int
    n_classes: int
    n_references: int  # N, the training sequences kept
    reference_length: int  # L, the longest of them (shorter ones are zero-padded)
    sharpness: float = 1.0  # the power of the inverse distances the probabilities are shares of (fitted in training)


def dtw_row(previous: torch.Tensor, first: torch.Tensor, x: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Row ``i`` of the DTW matrices of ``b`` queries against ``N`` references, from row ``i - 1``.

    previous: (b, N, L) float64, row ``i - 1`` (anything when ``first``), first: (b,) bool, step ``i`` is
    the query's first, x: (b, F) query step ``i``, references: (N, L, F) float64 -> row ``i``: (b, N, L).
    """
    cost = (x[:, None, None, :].double() - references).square().sum(-1)  # (b, N, L)
    # D[i-1, :]: before the first step nothing is reachable but the origin D[-1, -1] = 0
    previous = torch.where(first[:, None, None], torch.inf, previous)
    diagonal = torch.cat([torch.zeros_like(previous[..., :1]), previous[..., :-1]], dim=-1)  # D[i-1, j-1]
    diagonal[..., 0] = torch.where(first, 0.0, torch.inf)[:, None]
    reach = torch.minimum(previous, diagonal)  # m: (b, N, L)
    total = cost.cumsum(-1)  # S
    before = F.pad(total[..., :-1], (1, 0))  # S[k-1]
    return total + torch.cummin(reach - before, dim=-1).values


class DTWNearestNeighbour(nn.Module):
    """1-NN DTW over stored training sequences (see the module docstring).

    Parameters
    ----------
    n_features, n_classes:
        F and C.
    n_references, reference_length:
        N and L of the stored ``references`` buffer (N, L, F); ``reference_lengths`` (N,) and
        ``reference_labels`` (N,) say how much of each is real and its class. Fill them with
        :meth:`remember` (or ``load_state_dict``).
    sharpness:
        ``s`` in the logits ``-s log d_c``, ``d_c`` each class's nearest distance: the arg-max is the nearest
        neighbour's class, and the softmax gives each class a share in proportion to ``d_c ** -s``. Training
        fits ``s`` to the leave-one-out answers (``training.classify.fit_sharpness``): with ``s = 1`` a set
        classified without a miss got top probabilities of 0.43-0.8. A query far from every training
        sequence (a spike of 1e38) is far from each class alike, and gets near-equal shares.
    """

    def __init__(self, n_features: int, n_classes: int, n_references: int, reference_length: int,
                 sharpness: float = 1.0):
        super().__init__()
        self.n_classes = n_classes
        self.sharpness = float(sharpness)
        self.register_buffer("references", torch.zeros(n_references, reference_length, n_features))
        self.register_buffer("reference_lengths", torch.full((n_references,), reference_length, dtype=torch.int64))
        self.register_buffer("reference_labels", torch.zeros(n_references, dtype=torch.int64))

    @torch.no_grad()
    def remember(self, references: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> "DTWNearestNeighbour":
        """Store the training set: references (N, L, F) zero-padded, lengths (N,), labels (N,)."""
        self.references.copy_(references)
        self.reference_lengths.copy_(lengths)
        self.reference_labels.copy_(labels)
        return self

    def distances(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, T, F) zero-padded after each length, lengths: (B,) or None (all T) -> DTW distances (B, N) float64
        batch, steps, features = x.shape
        lengths = torch.full((batch,), steps) if lengths is None else lengths.to(x.device)
        n, length = self.references.shape[:2]
        chunk = max(1, CHUNK_ELEMENTS // (n * length * features))
        return torch.cat([self._distances(x[i : i + chunk], lengths[i : i + chunk]) for i in range(0, batch, chunk)])

    def _distances(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        references = self.references.double()
        last = (self.reference_lengths - 1).expand(len(x), -1)[..., None]  # (b, N, 1): each reference's last step
        row = torch.full((len(x), *references.shape[:2]), torch.inf, dtype=torch.float64, device=x.device)
        out = torch.full(row.shape[:2], torch.inf, dtype=torch.float64, device=x.device)  # (b, N)
        for i in range(int(lengths.max())):
            row = dtw_row(row, torch.full((len(x),), i == 0, device=x.device), x[:, i], references)
            ends = (lengths == i + 1)[:, None]  # (b, 1): queries whose last step this is
            out = torch.where(ends, row.gather(-1, last)[..., 0], out)
        return out

    def class_distances(self, distances: torch.Tensor) -> torch.Tensor:
        # distances: (B, N) float64 -> (B, C): each class's nearest distance (inf for a class with no reference)
        nearest = torch.full((len(distances), self.n_classes), torch.inf, dtype=distances.dtype, device=distances.device)
        return nearest.scatter_reduce(1, self.reference_labels.expand_as(distances), distances, "amin")

    def logits(self, distances: torch.Tensor) -> torch.Tensor:
        # distances: (B, N) float64 -> logits (B, C) float32: -sharpness x log of each class's nearest distance
        return (-self.sharpness * log_class_distances(self.class_distances(distances))).float()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, T, F) zero-padded after each length, lengths: (B,) int64 or None -> logits: (B, C)
        return self.logits(self.distances(x, lengths))
