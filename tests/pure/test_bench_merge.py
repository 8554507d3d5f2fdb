"""``bench.py --append`` keeps what an earlier run measured (``merge``)."""

from __future__ import annotations

from comfyui_magcache.benchmarks.merging import MERGED, merge


def _run(protocols: list[str], method: str) -> dict:
    return {
        "points": [{"testbed": "layout", "protocol": p, "method": method, "speed_asked": 2.0} for p in protocols],
        "speeds": [2.0],
        "testbeds": {"layout": {"protocols": protocols, "curve": {"n": len(protocols)},
                                "reading": {p: {"score": 1.0} for p in protocols}}},
        "section_seconds": 10.0, "command": method,
    }


def test_a_run_of_new_protocols_adds_to_a_testbeds_protocols_and_readings():
    earlier = _run(["euler:30:simple:1", "dpmpp_2m:30:simple:4"], "a")
    now = _run(["uni_pc:20:simple:1", "euler:30:simple:1"], "b")
    out = merge(earlier, now, MERGED["matrix"])
    info = out["testbeds"]["layout"]
    assert info["protocols"] == ["euler:30:simple:1", "dpmpp_2m:30:simple:4", "uni_pc:20:simple:1"]
    assert set(info["reading"]) == set(info["protocols"])
    assert info["curve"] == {"n": 2}  # the later run's calibration replaces the earlier one's
    assert len(out["points"]) == 4 and out["section_seconds"] == 20.0


def test_a_point_measured_again_replaces_the_earlier_one():
    earlier = _run(["euler:30:simple:1"], "a")
    now = _run(["euler:30:simple:1"], "a")
    now["points"][0]["mean_psnr"] = 1.0
    out = merge(earlier, now, MERGED["matrix"])
    assert out["points"] == now["points"]
