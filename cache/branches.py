"""Which branches a computed call runs: CFG-Cache, after FasterCache (Lv et al. 2024).

Under classifier-free guidance every call runs the model twice, for the
conditional and the unconditional prompt. FasterCache observed that the
difference between the two outputs changes slowly from step to step, and
differently in its low and high frequencies. So on every other computed call
in the skippable window only the conditional branch runs; the unconditional
output is rebuilt as ``cond + delta``, where ``delta`` is the difference cached
at the last call that ran both, its low and high frequencies (a 2-D Fourier
split over the latent's height and width) each scaled by how their size
changed between the last two such calls, continued to this call's sigma.
Those two growth rates are the "own weights along the schedule"; they are
measured on the run itself, so no constant is tuned to a model.

It multiplies with block skipping: a skipped call reuses both branches' residuals,
a computed one may run one branch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Frequencies (cycles per latent pixel, Nyquist = 0.5) up to this are "low".
LOW_FREQUENCY = 0.125


def _low_mask(h: int, w: int, device: torch.device) -> torch.Tensor:
    fy = torch.fft.fftfreq(h, device=device).abs().view(h, 1)
    fx = torch.fft.rfftfreq(w, device=device).view(1, -1)
    return ((fy <= LOW_FREQUENCY) & (fx <= LOW_FREQUENCY)).float()


@dataclass
class _Delta:
    value: torch.Tensor  # uncond - cond output
    spectrum: torch.Tensor  # its 2-D real FFT over height and width, computed once at the full call
    sigma: float
    norms: torch.Tensor  # [low, high] frequency norms, on the device (read only when rebuilding)


class CfgCache:
    """Decides which computed calls run only the conditional branch, and rebuilds the other."""

    def __init__(self) -> None:
        self.last: _Delta | None = None
        self.before: _Delta | None = None
        self.computed_in_window = 0
        self.cond_only_calls = 0
        self._growth: tuple[float, float] | None = None  # read once per pair of full calls

    def cond_only(self, in_window: bool) -> bool:
        """Whether this computed call (in the skippable window or not) runs only the conditional branch."""
        if not in_window or self.last is None:
            return False
        self.computed_in_window += 1
        return self.computed_in_window % 2 == 0

    def store(self, cond: torch.Tensor, uncond: torch.Tensor, sigma: float) -> None:
        """Both branches ran at ``sigma``: keep their difference and its spectrum (no read from the device here)."""
        delta = uncond - cond
        spec = torch.fft.rfft2(delta.float())
        mask = _low_mask(delta.shape[-2], delta.shape[-1], delta.device)
        low, high = (spec * mask).abs().square().sum().sqrt(), (spec * (1 - mask)).abs().square().sum().sqrt()
        norms = torch.stack((low, high))
        self.before, self.last = self.last, _Delta(delta, spec, sigma, norms)
        self._growth = None

    def rebuild(self, cond: torch.Tensor, sigma: float) -> torch.Tensor:
        """The unconditional output at ``sigma`` from the conditional one and the cached difference."""
        last = self.last
        assert last is not None
        w_low = w_high = 1.0
        if self.before is not None and self.before.sigma > last.sigma:
            if self._growth is None:
                low_b, high_b, low_l, high_l = torch.cat((self.before.norms, last.norms)).tolist()
                self._growth = (low_l / low_b if low_b > 0 else 1.0, high_l / high_b if high_b > 0 else 1.0)
            a = (last.sigma - sigma) / (self.before.sigma - last.sigma)
            w_low, w_high = (g**a if g > 0 and math.isfinite(g) else 1.0 for g in self._growth)
        self.cond_only_calls += 1
        if w_low == w_high:
            return cond + last.value * w_low
        mask = _low_mask(last.value.shape[-2], last.value.shape[-1], last.spectrum.device)
        weighted = torch.fft.irfft2(last.spectrum * (w_high + (w_low - w_high) * mask), s=last.value.shape[-2:])
        return cond + weighted.to(cond.dtype)
