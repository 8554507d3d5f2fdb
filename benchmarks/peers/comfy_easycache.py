"""ComfyUI's own EasyCache and LazyCache nodes (``comfy_extras/nodes_easycache.py``), as users run them.

Their threshold is tuned to each speed; the other inputs are the nodes'
defaults (start 0.15, end 0.95, verbose off).
"""

from __future__ import annotations

from typing import Any

from comfyui_magcache.benchmarks.peers.common import Context, Line


def _node(name: str) -> Any:
    def make(patcher: Any, threshold: float) -> Any:
        from comfy_extras import nodes_easycache

        return getattr(nodes_easycache, name).execute(patcher, threshold, 0.15, 0.95, False).result[0]

    return make


def lines(context: Context) -> list[Line]:
    return [Line("EasyCache (ComfyUI)", _node("EasyCacheNode"), tuned=True, high=3.0),
            Line("LazyCache (ComfyUI)", _node("LazyCacheNode"), tuned=True, high=3.0)]
