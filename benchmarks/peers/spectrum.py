"""Spectrum (2026): a dense-early schedule and a global spectral forecast, from the paper's description.

The forecast: a Chebyshev polynomial of degree 4 in sigma, ridge-regularised
(0.1), fitted to the computed residuals and blended with a local linear
forecast: the engine's ``forecast: Chebyshev fit (Spectrum)`` reuse
(``cache/spectrum.py``). The schedule computes every call of the first 20% of the
schedule, then evenly spaced calls: our reading of "dense early", with
MagCache's own protection share (the paper's exact schedule was not
available).
"""

from __future__ import annotations

from comfyui_magcache.benchmarks.peers.common import Context, Engine, Line
from comfyui_magcache.cache.config import MagCacheConfig, Reuse, When

DENSE_SHARE = 0.2


def lines(context: Context) -> list[Line]:
    config = MagCacheConfig(context.curve, context.family, 0.0, 3, DENSE_SHARE, when=When.UNIFORM,
                            reuse=Reuse.SPECTRAL)
    return [Line("Spectrum (dense first 20%, Chebyshev forecast)", Engine(config))]
