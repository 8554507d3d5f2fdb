"""Small facts about the running ComfyUI: argument positions and its version."""

from __future__ import annotations

from typing import Any

#: Positions of the arguments we read, by function (ComfyUI's signatures).
_POSITIONS: dict[str, dict[str, int]] = {
    "outer_sample": {"noise": 0, "latent_image": 1, "sampler": 2, "sigmas": 3, "seed": 7},
    "calc_cond_batch": {"model": 0, "conds": 1, "x_in": 2, "timestep": 3, "model_options": 4},
    "apply_model": {"x": 0, "t": 1, "c_concat": 2, "c_crossattn": 3, "control": 4, "transformer_options": 5},
}


def arg(function: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], default: Any = None) -> Any:
    """Argument ``name`` of ComfyUI's ``function``, given by keyword or by position."""
    if name in kwargs:
        return kwargs[name]
    index = _POSITIONS[function][name]
    return args[index] if len(args) > index else default


def with_arg(
    function: str, name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...]:
    """``args`` with argument ``name`` of ``function`` replaced by ``value``; call as ``f(*result)``.

    Keyword arguments are folded into the positions, so the result is the whole call.
    """
    positions = _POSITIONS[function]
    out = list(args) + [None] * (max(positions.values()) + 1 - len(args))
    for key, index in positions.items():
        if key in kwargs:
            out[index] = kwargs[key]
    out[positions[name]] = value
    extra = set(kwargs) - set(positions)
    if extra:
        raise TypeError(f"unexpected arguments of {function}: {sorted(extra)}")
    return tuple(out[: max(len(args), max(positions.values()) + 1)])


def host_version() -> str:
    """The running ComfyUI's version, for log lines and curve metadata."""
    try:
        import comfyui_version

        return str(comfyui_version.__version__)
    except ImportError:
        return "(unknown version)"


def show_text(node_id: str | None, text: str) -> None:
    """Show ``text`` in the box of node ``node_id`` in the page (ComfyUI's progress text).

    A no-op without a node id or outside a server (tests, scripts): the log
    line the caller also writes is then the only record.
    """
    if node_id is None:
        return
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    send = getattr(server, "send_progress_text", None)
    if send is not None:
        send(text, node_id)
