"""Per-sequence standardisation for classifiers: over the whole sequence, or running (causal).

``INSTANCE_NORMS`` names the choices a :class:`~models.recurrent.SequenceClassifier` takes:

* ``"none"``: inputs are standardised with the training set's statistics only;
* ``"sequence"``: every sequence is also fed standardised by the mean and std of *all* its steps. Each
  new step changes those statistics and so every earlier input: such a model cannot stream;
* ``"running"``: step ``t`` is standardised by the mean and std of steps ``0..t`` only, so it never
  changes once read and a stream carries three running sums (count, sum, sum of squares) in its state.

Older cards stored a bool: ``True`` is ``"sequence"``, ``False`` is ``"none"``.
"""

from __future__ import annotations

import torch

INSTANCE_NORMS = ("none", "sequence", "running")
EPS = 1e-5


def instance_norm_name(value: bool | str) -> str:
    """The mode named by a card's ``instance_norm`` (a bool in older cards); ValueError lists the valid ones."""
    if isinstance(value, bool):
        return "sequence" if value else "none"
    if value not in INSTANCE_NORMS:
        raise ValueError(f"unknown instance_norm {value!r}; valid: {', '.join(INSTANCE_NORMS)}")
    return value


def _valid_mask(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    # x: (B, T, F), lengths: (B,) or None -> (B, T, 1), 1 at valid steps
    if lengths is None:
        return torch.ones(*x.shape[:2], 1, dtype=x.dtype, device=x.device)
    steps = torch.arange(x.shape[1], device=x.device)
    return (steps[None, :] < lengths.to(x.device)[:, None]).to(x.dtype).unsqueeze(-1)


def instance_standardize(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Standardise every sequence by its own per-feature mean and std over its valid steps.

    x: (B, T, F), lengths: (B,) or None -> (B, T, F) with padded steps left at zero.
    """
    mask = _valid_mask(x, lengths)  # (B, T, 1)
    count = mask.sum(dim=1, keepdim=True)  # (B, 1, 1)
    mean = (x * mask).sum(dim=1, keepdim=True) / count
    var = (((x - mean) * mask) ** 2).sum(dim=1, keepdim=True) / count
    return (x - mean) / (var.sqrt() + EPS) * mask


def running_standardize(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Standardise step ``t`` of every sequence by the per-feature mean and std of its steps ``0..t``.

    x: (B, T, F), lengths: (B,) or None -> (B, T, F) with padded steps left at zero. The sums run in
    float64, exactly as :func:`running_step` keeps them, so a stream and a whole sequence agree.
    """
    x64 = x.double()
    count = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=torch.float64)[None, :, None]  # (1, T, 1)
    mean = x64.cumsum(dim=1) / count  # (B, T, F)
    var = ((x64 * x64).cumsum(dim=1) / count - mean * mean).clamp_min(0.0)
    return ((x64 - mean) / (var.sqrt() + EPS)).to(x.dtype) * _valid_mask(x, lengths)


def running_step(x: torch.Tensor, moments: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of :func:`running_standardize` for a batch of streams.

    x: (B, F) this step, moments: (B, 2, F) float64 running sum and sum of squares before it, count:
    (B,) float64 steps seen before it -> (z: (B, F), moments after it: (B, 2, F)).
    """
    x64 = x.double()
    moments = moments + torch.stack([x64, x64 * x64], dim=1)
    n = (count + 1)[:, None]  # (B, 1)
    mean = moments[:, 0] / n
    var = (moments[:, 1] / n - mean * mean).clamp_min(0.0)
    return ((x64 - mean) / (var.sqrt() + EPS)).to(x.dtype), moments
