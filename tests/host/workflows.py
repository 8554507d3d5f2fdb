"""UI-format workflows: check them against a server's ``/object_info`` and convert them to API format.

The page saves a workflow as nodes with ``widgets_values`` (the widget values
in the order the page draws the widgets) and links as
``[id, from_node, from_slot, to_node, to_slot, type]``. The server's
``/prompt`` takes API format instead: each node's inputs by name. The page
makes the widgets from ``/object_info``: one widget per INT, FLOAT, STRING,
BOOLEAN or combo input (required, then optional, in ``input_order``) that is
not ``forceInput``, plus a "control after generate" widget after an input
that declares ``control_after_generate`` (seeds) and an "upload" widget
after a combo that declares ``image_upload``. A dynamic combo (ComfyUI 0.10 and
newer, e.g. SaveVideo's ``format``) is a combo whose chosen option brings
inputs of its own: their widgets follow it, named ``format.codec`` and so on,
which are also their names in API format. Both helpers here rebuild that
layout from ``/object_info`` alone, so a workflow that passes them has exactly
the widgets the running server declares.

Two things a newer ComfyUI adds are accepted in a workflow saved on an older
one, because the page fills them in on load: values for trailing *optional*
widget inputs it lacks (CreateVideo's ``bit_depth`` in 0.33; the page and the
server take the default), and the output slots of output nodes, which pass
their input through in 0.33 (SaveImage's ``images``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: Node types that only the page knows (notes); the server never sees them.
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote"})
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
#: How ComfyUI 0.10 and newer declare a combo whose options bring inputs of their own.
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
#: What a file-list combo holds: model weights and input images.
FILE_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class InputSpec:
    """One input of a node type as ``/object_info`` declares it."""

    name: str
    type: str  # "COMBO" for every combo, whichever way the server spells it
    options: dict[str, Any]
    required: bool
    choices: tuple[Any, ...] = ()
    dynamic: bool = False  # a dynamic combo: the chosen option's inputs follow it (see ``chosen_inputs``)

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput")

    def lists_files(self, marker: str) -> bool:
        """Whether this combo lists files from a folder: it offers ``marker``, a file the test put in every folder."""
        return self.type == "COMBO" and any(
            isinstance(c, str) and c.rsplit("/", 1)[-1].startswith(marker) for c in self.choices
        )


@dataclass(frozen=True)
class WidgetSlot:
    """One entry of ``widgets_values``: an input's widget, or the extra widget the page adds after one."""

    input: InputSpec
    extra: str | None = None  # None: the input's own value; "control" or "upload": the page's companion widget


def input_specs(node_info: dict[str, Any], prefix: str = "") -> list[InputSpec]:
    """The node type's inputs in the order the page lays them out: required, then optional.

    ``prefix`` names the inputs of a dynamic combo's option (``"format."``).
    """
    declared = node_info["input"]
    order = node_info.get("input_order") or {s: list(declared.get(s, {})) for s in ("required", "optional")}
    specs = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            raw = declared[section][name]
            options = raw[1] if len(raw) > 1 and isinstance(raw[1], dict) else {}
            required = section == "required"
            name = prefix + name
            if isinstance(raw[0], list):  # classic combo: the choices in place of the type
                specs.append(InputSpec(name, "COMBO", options, required, tuple(raw[0])))
            elif raw[0] == "COMBO":  # newer spelling: the choices in the options
                specs.append(InputSpec(name, "COMBO", options, required, tuple(options.get("options", ()))))
            elif raw[0] == DYNAMIC_COMBO:  # the choices are the options' keys
                keys = tuple(o["key"] for o in options.get("options", ()))
                specs.append(InputSpec(name, "COMBO", options, required, keys, dynamic=True))
            else:
                specs.append(InputSpec(name, str(raw[0]), options, required))
    return specs


def chosen_inputs(spec: InputSpec, value: Any) -> list[InputSpec]:
    """The inputs that option ``value`` of the dynamic combo ``spec`` brings (none for an unknown value)."""
    for option in spec.options.get("options", ()):
        if option.get("key") == value:
            return input_specs({"input": option.get("inputs", {})}, prefix=spec.name + ".")
    return []


def widget_layout(node_info: dict[str, Any], values: list[Any] | None = None) -> list[WidgetSlot]:
    """The entries of ``widgets_values`` that the page writes for this node type, in order.

    A dynamic combo's widget is followed by those of the option chosen in
    ``values`` (its default, or first option, where ``values`` has none).
    """
    slots: list[WidgetSlot] = []

    def lay_out(specs: list[InputSpec]) -> None:
        for spec in specs:
            if not spec.is_widget:
                continue
            index = len(slots)
            slots.append(WidgetSlot(spec))
            if spec.options.get("control_after_generate"):
                slots.append(WidgetSlot(spec, "control"))
            if spec.options.get("image_upload"):
                slots.append(WidgetSlot(spec, "upload"))
            if spec.dynamic:
                if values is not None and index < len(values):
                    chosen = values[index]
                else:
                    chosen = spec.options.get("default", spec.choices[0] if spec.choices else None)
                lay_out(chosen_inputs(spec, chosen))

    lay_out(input_specs(node_info))
    return slots


def _value_problem(slot: WidgetSlot, value: Any, marker: str) -> str | None:
    """Why ``value`` does not fit the widget, or None."""
    spec = slot.input
    if slot.extra == "control":
        ok = value in CONTROL_VALUES
        return None if ok else f"control_after_generate {value!r} is not one of {sorted(CONTROL_VALUES)}"
    if slot.extra == "upload":
        return None if isinstance(value, str) else f"upload widget value {value!r} is not a string"
    if spec.type in ("INT", "FLOAT"):
        number_types = (int,) if spec.type == "INT" else (int, float)
        if isinstance(value, bool) or not isinstance(value, number_types) or not math.isfinite(value):
            return f"{value!r} is not a{'n integer' if spec.type == 'INT' else ' number'}"
        low, high = spec.options.get("min"), spec.options.get("max")
        if low is not None and value < low:
            return f"{value!r} is below the minimum {low}"
        if high is not None and value > high:
            return f"{value!r} is above the maximum {high}"
        return None
    if spec.type == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    if spec.type == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    # COMBO
    if value in spec.choices:
        return None
    if spec.lists_files(marker) and isinstance(value, str) and value.lower().endswith(FILE_EXTENSIONS):
        return None  # a model or image file this server does not have; the check is about shapes, not files
    shown = list(spec.choices[:12]) + (["..."] if len(spec.choices) > 12 else [])
    return f"{value!r} is not one of {shown}"


@dataclass
class Problems:
    """What a workflow gets wrong, one readable line each."""

    lines: list[str] = field(default_factory=list)

    def add(self, node: dict[str, Any] | None, text: str) -> None:
        where = f"node {node.get('id')} ({node.get('type')}): " if node else ""
        self.lines.append(where + text)


def check_workflow(workflow: dict[str, Any], object_info: dict[str, Any], marker: str) -> list[str]:
    """Every way ``workflow`` disagrees with ``object_info``; empty when it matches.

    Node types must exist; each node's input and output slots must be the
    declared ones with the declared types; ``widgets_values`` must have exactly
    the declared widgets, each value of the right kind, within min/max, and a
    combo value one of the server's choices. One exception, for combos that list
    the files of a folder: a value naming a file (by its extension: model weights
    or an image) passes even when this server lacks that file, because a test
    server holds none of the multi-gigabyte model files the examples name. Which
    combos list files is not guessed from names: the test server gets an empty
    file named ``marker`` plus an extension in every model folder and in its
    input folder, so exactly the combos that offer it are file lists (and a
    combo such as ``add_noise`` never is). Required inputs that are not widgets
    must be linked, and every link must join slots of its own type.
    """
    problems = Problems()
    nodes = {node["id"]: node for node in workflow.get("nodes", [])}
    for node in nodes.values():
        kind = node.get("type")
        if kind in FRONTEND_ONLY:
            values = node.get("widgets_values")
            if not (isinstance(values, list) and len(values) == 1 and isinstance(values[0], str)):
                problems.add(node, "a note holds one text")
            continue
        info = object_info.get(kind)
        if info is None:
            problems.add(node, "the server has no node of this type")
            continue
        _check_slots(node, info, problems)
        _check_widgets(node, info, problems, marker)
    _check_links(workflow, nodes, problems)
    return problems.lines


def _check_slots(node: dict[str, Any], info: dict[str, Any], problems: Problems) -> None:
    specs = {spec.name: spec for spec in input_specs(info)}
    linked = set()
    for slot in node.get("inputs") or []:
        spec = specs.get(slot.get("name"))
        if spec is None:
            problems.add(node, f"input slot {slot.get('name')!r} is not an input of this node type")
            continue
        if spec.is_widget and "widget" not in slot:
            problems.add(node, f"input slot {spec.name!r} is a widget, but the slot does not say so")
        elif not spec.is_widget and slot.get("type") != spec.type:
            problems.add(node, f"input slot {spec.name!r} has type {slot.get('type')!r}, the server says {spec.type!r}")
        if slot.get("link") is not None:
            linked.add(spec.name)
    for spec in specs.values():
        if spec.required and not spec.is_widget and spec.name not in linked:
            problems.add(node, f"required input {spec.name!r} is not connected")
    declared = list(zip(info.get("output_name", []), info.get("output", [])))
    saved = [(slot.get("name"), slot.get("type")) for slot in node.get("outputs") or []]
    saved_types, declared_types = [t for _, t in saved], [t for _, t in declared]
    # Output nodes of ComfyUI 0.33 pass their input through (SaveImage -> images); a
    # workflow saved on an older one has no such slot, and the page adds it on load.
    added_on_load = info.get("output_node") and declared_types[: len(saved_types)] == saved_types
    if saved_types != declared_types and not added_on_load:
        problems.add(node, f"output slots {saved} differ from the server's {declared}")


def _check_widgets(node: dict[str, Any], info: dict[str, Any], problems: Problems, marker: str) -> None:
    values = node.get("widgets_values")
    if values is None:
        values = []
    if not isinstance(values, list):
        problems.add(node, f"widgets_values is a {type(values).__name__}, expected a list")
        return
    layout = widget_layout(info, values)
    if len(values) < len(layout) and not any(slot.input.required for slot in layout[len(values) :]):
        layout = layout[: len(values)]  # optional inputs newer than the file: their defaults apply
    if len(values) != len(layout):
        names = [s.input.name + (f" ({s.extra})" if s.extra else "") for s in layout]
        problems.add(node, f"{len(values)} widget values for the {len(layout)} widgets {names}: {values}")
        return
    for slot, value in zip(layout, values):
        why = _value_problem(slot, value, marker)
        if why:
            problems.add(node, f"widget {slot.input.name!r}{' (' + slot.extra + ')' if slot.extra else ''}: {why}")


def _check_links(workflow: dict[str, Any], nodes: dict[int, dict[str, Any]], problems: Problems) -> None:
    for link in workflow.get("links", []):
        link_id, src_id, src_slot, dst_id, dst_slot, link_type = link
        src, dst = nodes.get(src_id), nodes.get(dst_id)
        if src is None or dst is None:
            problems.add(None, f"link {link_id} joins a node that does not exist")
            continue
        outputs, inputs = src.get("outputs") or [], dst.get("inputs") or []
        if not (0 <= src_slot < len(outputs) and 0 <= dst_slot < len(inputs)):
            problems.add(None, f"link {link_id} uses a slot that does not exist")
            continue
        out, inp = outputs[src_slot], inputs[dst_slot]
        if not (out.get("type") == inp.get("type") == link_type):
            problems.add(None, f"link {link_id}: {out.get('type')} -> {inp.get('type')} carried as {link_type}")
        if inp.get("link") != link_id or link_id not in (out.get("links") or []):
            problems.add(None, f"link {link_id} is not recorded on both of its slots")


def to_api(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The API-format prompt that the page would queue for ``workflow`` (no bypassed nodes, no reroutes)."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        if node.get("mode", 0) != 0:
            raise ValueError(f"node {node['id']} is muted or bypassed; this converter handles active nodes only")
        info = object_info[node["type"]]
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values") or []
        # Optional widget inputs the file has no value for are left out: the server takes their default.
        for slot, value in zip(widget_layout(info, values), values):
            if slot.extra is None:
                inputs[slot.input.name] = value
        for slot in node.get("inputs") or []:
            if slot.get("link") is not None:
                _, src_id, src_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(src_id), src_slot]
        prompt[str(node["id"])] = {
            "class_type": node["type"],
            "inputs": inputs,
            "_meta": {"title": node.get("title") or info.get("display_name") or node["type"]},
        }
    return prompt
