"""The unit a forecaster's quantile band is measured in, window by window.

A quantile is the median plus an offset (``Forecaster.quantile_offsets``) in units of the window: by default
its standard deviation, the unit the forecaster standardises every window in. Where the windows come from
several series (a panel: regions, products, or several target channels), a smooth trending series and a noisy
one can have windows of one standard deviation and very different noise, and a band in standard deviations
is then too wide for the one and too narrow for the other. There the unit is the standard deviation times
``(noise / standard deviation) ** power``, the noise being the root mean square of the window less its
least-squares line and seasonal offsets (``models.starts.line_and_season``): ``power`` 0.5 is the geometric
mean of the window's spread and its noise. It is a fixed function of the window, like the start, so the
stored model stays one function of the window: a stream's forecast equals the whole window's.
"""

from __future__ import annotations

import numpy as np
import torch

from models.starts import line_and_season

# The noise counts as at least this share of the window's standard deviation: a window that is almost exactly a
# line and a season would otherwise get a band of almost nothing.
NOISE_FLOOR = 0.1
# A shorter window leaves no noise about its line: the unit would be the floor whatever the window.
MIN_LOOKBACK = 3


def residual_matrix(lookback: int, season: int) -> np.ndarray:
    """``R`` (L, L) with ``R @ window`` the window less its least-squares line and seasonal offsets (season 1,
    the line alone, where the window holds fewer than two seasons)."""
    m = season if season > 1 and lookback >= 2 * season else 1
    start, slope, offsets = line_and_season(np.eye(lookback), m)  # every unit window's fit: the fit's columns
    steps = np.arange(lookback)
    fitted = start[:, None] + slope[:, None] * steps[None, :] + offsets[:, steps % m]  # (L windows, L steps)
    return (np.eye(lookback) - fitted.T).astype(np.float32)


def noise_units(z_norm: torch.Tensor, residual: torch.Tensor, power: float) -> torch.Tensor:
    """The band's unit (B, 1, K) of each standardised window ``z_norm`` (B, L, K), in its standard deviations."""
    noise = torch.einsum("tl,blk->btk", residual, z_norm).square().mean(dim=1, keepdim=True).sqrt()
    return noise.clamp_min(NOISE_FLOOR) ** power
