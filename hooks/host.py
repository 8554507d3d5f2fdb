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


#: Most lines a node's box keeps within one prompt (a two-expert workflow runs the sampler twice).
SHOWN_LINES = 8
#: What each node's box shows: the prompt it belongs to and its lines, so a new prompt starts the box over.
_shown: dict[str, tuple[str | None, list[str]]] = {}


def show_text(node_id: str | None, text: str) -> None:
    """Add ``text`` to the box of node ``node_id`` in the page (ComfyUI's progress text).

    The page shows only the last progress text a node got, so the lines sent
    within one prompt (the curve chosen, each run's plan and summary) are sent
    together, newest first; a new prompt starts the box over. A no-op without a node id or
    outside a server (tests, scripts): the log line the caller also writes is
    then the only record.
    """
    if node_id is None:
        return
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    send = getattr(server, "send_progress_text", None)
    if send is None:
        return
    node_id = str(node_id)
    prompt = _prompt_id()
    last_prompt, lines = _shown.get(node_id, (None, []))
    lines = [*lines, text] if prompt is not None and prompt == last_prompt else [text]
    _shown[node_id] = (prompt, lines[-SHOWN_LINES:])
    # Newest first: the box shows what fits, and the run's summary is what the user looks for.
    send("\n\n".join(reversed(_shown[node_id][1])), node_id)


def _prompt_id() -> str | None:
    """The id of the prompt being executed, where ComfyUI says (None otherwise)."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None
    context = get_executing_context()
    return None if context is None else str(context.prompt_id)
