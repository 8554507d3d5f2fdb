"""Cached runs on the shared hooks, in three parts (``config`` names them).

``magcache``: the run state and its wrappers. *When* the stack is computed:
``policy`` (the paper's rule), ``planner`` (speed target, uniform),
``adaptive`` (after AdaCache). *What* a skipped call adds: ``reuse`` (the
cache entry, plain and scaled), ``taylor`` (line, parabola), ``spectrum``
(Chebyshev fit), ``extrapolated`` (FasterCache's damped line), chosen through
``estimators``. *Which branches* run: ``branches`` (CFG-Cache). None of them
but ``magcache`` touches ComfyUI; schedules and forecast coefficients are
arithmetic on floats from the curve and the sigmas.
"""
