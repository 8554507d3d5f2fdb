"""The node's ``reuse`` choice -> the estimator a run uses: one table row per estimator file."""

from __future__ import annotations

from collections.abc import Callable

from ..calibration.curve import MagnitudeCurve
from .config import Reuse
from .extrapolated import DampedLine
from .reuse import Estimator, PlainReuse, ScaledReuse
from .spectrum import ChebyshevFit
from .taylor import SigmaPolynomial

#: Each takes the run's curve and sigmas (most need neither).
_MAKERS: dict[Reuse, Callable[[MagnitudeCurve, list[float]], Estimator]] = {
    Reuse.PLAIN: lambda curve, sigmas: PlainReuse(),
    Reuse.SCALED: lambda curve, sigmas: ScaledReuse(curve),
    Reuse.EXTRAPOLATED: lambda curve, sigmas: DampedLine(),
    Reuse.LINEAR: lambda curve, sigmas: SigmaPolynomial(1),
    Reuse.QUADRATIC: lambda curve, sigmas: SigmaPolynomial(2),
    Reuse.SPECTRAL: lambda curve, sigmas: ChebyshevFit.for_run(sigmas),
}


def make(reuse: Reuse, curve: MagnitudeCurve, sigmas: list[float]) -> Estimator:
    """The estimator the config names, for a run over ``sigmas``."""
    return _MAKERS[reuse](curve, sigmas)
