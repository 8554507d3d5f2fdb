"""``bench.py --append``: a section's new points merged over the ones its results file already holds.

Why a module of its own: the benchmark is a script (it boots ComfyUI on import), and this is the part of
it a pure test can check without a host.
"""

from __future__ import annotations

from typing import Any

#: Sections whose ``--append`` keeps an earlier run's points: what identifies a point (a later one replaces it).
MERGED: dict[str, tuple[str, ...]] = {
    "quality": ("method",),
    "forecasts": ("protocol", "method", "speed_asked"),
    "matrix": ("testbed", "protocol", "method", "speed_asked"),
}


def merge(earlier: dict[str, Any], now: dict[str, Any], key: tuple[str, ...]) -> dict[str, Any]:
    """``now``'s points over ``earlier``'s (same key: ``now`` wins); lists and tables joined; times added."""
    def ident(p: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(p[k] for k in key)

    fresh = {ident(p) for p in now["points"]}
    out = {**earlier, **now, "points": [p for p in earlier["points"] if ident(p) not in fresh] + now["points"]}
    for field in ("protocols", "speeds"):
        if field in earlier and field in now:
            out[field] = sorted(set(earlier[field]) | set(now[field]), key=str)
    if "testbeds" in earlier:
        # Per testbed: a run of some protocols adds to the earlier ones (their list and readings), not replaces them.
        beds = dict(earlier["testbeds"])
        for bed, info in now["testbeds"].items():
            old = beds.get(bed, {})
            known = list(old.get("protocols", []))
            protocols = known + [p for p in info["protocols"] if p not in known]
            beds[bed] = {**old, **info, "protocols": protocols,
                         "reading": {**old.get("reading", {}), **info.get("reading", {})}}
        out["testbeds"] = beds
    out["section_seconds"] = earlier.get("section_seconds", 0.0) + now.get("section_seconds", 0.0)
    out["command"] = f"{earlier.get('command')}; then {now['command']}"
    return out
