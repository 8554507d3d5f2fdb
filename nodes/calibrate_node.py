"""The calibration nodes: MagCache Calibrate records a curve, MagCache Curve Plot shows it.

Why two nodes: a curve exists only once sampling has run, but the recorder must
be attached to the model before the sampler. So MagCache Calibrate sits where
MagCache would (after the loader) and returns the model with the recorder
attached plus the curve's name; MagCache Curve Plot takes that name and the
sampler's LATENT, which makes ComfyUI run it after the sampler, when the curve
has been saved, and draws it as an IMAGE shown on the node. Calibrate itself
shows the saved file and the plot on its node once the sampler has saved it.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch
from comfy_api.latest import io, ui

from ..calibration import catalog, recorder
from ..calibration.curve import CurveError, MagnitudeCurve
from ..calibration.plot import render_curve
from ..calibration.runs import SOURCE, runs_of, summary
from ..hooks.families import (
    Family,
    Level,
    blocks_of,
    describe_unsupported,
    family_by_key,
    family_of,
    model_width,
    sampled_class,
)
from ..hooks.host import show_text
from .magcache_node import short

log = logging.getLogger("comfyui-magcache")

IF_EXISTS = ("combine", "replace")
#: Where to measure: "auto" is the block stack where the model has block patches, else the model's output.
LEVELS = ("auto", "output")


def model_identity(model: Any, family: Family, level: Level) -> dict[str, Any]:
    """What a calibration records about its model: family and sizes, cheap to compute (no weight hash).

    Only JSON-native values, so the identity compares equal after a round trip through a file.
    """
    dm = model.model.diffusion_model
    return {
        "architecture": family.key,
        "level": level.value,
        "model_config": type(model.model.model_config).__name__,
        "fingerprint": {
            "blocks": {stack.attr: len(blocks_of(dm, stack.attr)) for stack in family.stacks},
            "width": model_width(dm),
            "parameters": int(sum(p.numel() for p in dm.parameters())),
        },
    }


class MagCacheCalibrate(io.ComfyNode):
    """Records the magnitude curve of the model it is given while a generation runs normally."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """Inputs as in the first version (saved workflows keep their widget positions)."""
        return io.Schema(
            node_id="MagCacheCalibrate",
            display_name="MagCache Calibrate",
            category="sampling/magcache",
            description=(
                "Records a MagCache curve for this model. Put it after the model loader (instead of MagCache), run "
                "one generation as usual: the output is unchanged, and the curve is saved to "
                "models/magcache/<name>.safetensors, where the MagCache node's curve list finds it. More runs into "
                "the same name (other prompts or seeds) are combined. After the run the node shows where the "
                "curve was saved and its plot."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to calibrate."),
                io.String.Input(
                    "name",
                    default="my_model",
                    tooltip="Name of the curve file in models/magcache. Letters, digits, '.', '_' and '-'; "
                    "anything else (path separators included) becomes '_'.",
                ),
                io.Combo.Input(
                    "if_exists",
                    options=list(IF_EXISTS),
                    default=IF_EXISTS[0],
                    tooltip="combine: add each run to the saved curve of this name (its spread shows how much "
                    "prompts and seeds matter). replace: each run starts the curve over.",
                ),
                io.Combo.Input(
                    "level",
                    options=list(LEVELS),
                    default=LEVELS[0],
                    optional=True,
                    tooltip="Where to measure. auto: the transformer's block stack where the model allows it "
                    "(only the blocks are skipped later), else the whole model's output. output: the whole "
                    "model's output, for any model; MagCache then skips the whole model with this curve.",
                ),
            ],
            outputs=[
                io.Model.Output(
                    "recording_model",  # ids must differ from the inputs' (ComfyUI 0.3.64 checks); shown as "model"
                    display_name="model",
                    tooltip="The model with the recorder attached (sampling is unchanged; the input model is left "
                    "as it was).",
                ),
                io.String.Output(
                    "curve_name",
                    display_name="curve_name",
                    tooltip="The saved curve's file name, as the MagCache node's curve list shows it.",
                ),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model: Any, name: str, if_exists: str, level: str = LEVELS[0]) -> io.NodeOutput:
        """Attach the recorder to a clone; the curve is saved (and shown on the node) when sampling ends."""
        if if_exists not in IF_EXISTS:
            raise ValueError(f"if_exists must be one of {IF_EXISTS}, got {if_exists!r}")
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        file_name = catalog.clean_curve_name(name)
        if file_name != name and file_name != f"{name}{catalog.SUFFIX}":
            log.info("MagCache Calibrate: curve name '%s' is saved as '%s'", short(name), short(file_name))
        model_class = sampled_class(model)  # not a class another node's patch left on the live model
        family = family_of(model.model.diffusion_model, model.model.model_config, model_class)
        if family is None or family.unsupported:
            raise ValueError(
                f"MagCache Calibrate: {describe_unsupported(model, family, model_class)}, so MagCache can neither "
                "calibrate nor speed it up"
            )
        chosen = family.level if level == LEVELS[0] else Level.OUTPUT
        node_id = getattr(cls.hidden, "unique_id", None) if cls.hidden is not None else None
        target = recorder.CalibrationTarget(
            file_name=file_name,
            family=family,
            level=chosen,
            model=model_identity(model, family, chosen),
            combine=if_exists == "combine",
            on_saved=None if node_id is None else partial(show_saved, str(node_id)),
        )
        show_text(node_id, f"will record this model's curve into '{short(file_name)}' during the next generation")
        patched = model.clone()
        recorder.attach(patched, target)
        return io.NodeOutput(patched, file_name)


def show_saved(node_id: str, path: Path, curve: MagnitudeCurve) -> None:
    """Put where the curve was saved, and its plot, on the Calibrate node in the page.

    The node itself ran before the sampler, so its own output could not carry
    them: the text goes as progress text and the plot as an "executed" message
    for the node, which is what the page draws a node's images from. Outside a
    server (tests, scripts) nothing is sent; the log line stays the record.
    """
    show_text(node_id, f"saved to {path}\n{summary(curve)}")
    try:
        from comfy_execution.utils import get_executing_context
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None:
        return
    saved = ui.ImageSaveHelper.save_images(
        plot_image(curve), filename_prefix="MagCacheCalibrate", folder_type=io.FolderType.temp, cls=None
    )
    context = get_executing_context()
    message = {
        "node": node_id,
        "display_node": node_id,
        "output": {"images": [dict(result) for result in saved]},
        "prompt_id": None if context is None else context.prompt_id,
    }
    server.send_sync("executed", message, server.client_id)


class MagCacheCurvePlot(io.ComfyNode):
    """Draws a saved MagCache curve (or a preset) as an image, shown on the node itself."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        """An output node, so it runs and shows its plot without a Preview Image node after it."""
        return io.Schema(
            node_id="MagCacheCurvePlot",
            display_name="MagCache Curve Plot",
            category="sampling/magcache",
            description=(
                "Plots a MagCache curve: the recorded magnitude ratio against sigma for cond and uncond, its "
                "spread, every run it was combined from, and the preset of the same family when there is one. "
                "Connect curve_name from MagCache Calibrate and the sampler's LATENT to 'samples' so the plot is "
                "drawn after the calibration run. The plot shows on the node."
            ),
            inputs=[
                io.String.Input(
                    "curve_name",
                    force_input=True,
                    tooltip="A saved curve's name (from MagCache Calibrate) or a preset's.",
                ),
                io.Latent.Input(
                    "samples",
                    optional=True,
                    tooltip="The sampler's output: only orders the plot after the calibration run.",
                ),
            ],
            outputs=[io.Image.Output(tooltip="The plot, also shown on the node; for Save Image if wanted.")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **_: Any) -> str:
        """Changes whenever a saved curve file changes, so a recalibrated or replaced curve is drawn again.

        The curve's name usually comes over a link, which ComfyUI does not pass
        here, so the whole curve folder is fingerprinted (names, sizes, times).
        """
        return saved_curves_fingerprint()

    @classmethod
    def execute(cls, curve_name: str, samples: Any = None) -> io.NodeOutput:
        """Draw the curve; return it and show it on the node."""
        image = plot_image(_load(curve_name, waited=samples is not None))
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))


def plot_image(curve: MagnitudeCurve) -> torch.Tensor:
    """The curve's plot as a one-picture IMAGE batch."""
    runs = [run.roles for run in runs_of(curve)] if curve.metadata.get("source") == SOURCE else []
    image = render_curve(curve, runs, _family_preset(curve), subtitle=_subtitle(curve, len(runs)))
    return torch.from_numpy(image)[None]


def saved_curves_fingerprint() -> str:
    """Names, sizes and modification times of every saved curve file."""
    parts = []
    for name in catalog.saved_curve_names():
        try:
            stat = catalog.saved_curve_path(name).stat()
        except (CurveError, OSError):
            parts.append(f"{name}:missing")
            continue
        parts.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def _load(curve_name: str, waited: bool) -> MagnitudeCurve:
    if curve_name in catalog.preset_names():
        return catalog.load_preset(curve_name)
    try:
        return catalog.load_named_curve(catalog.clean_curve_name(curve_name))
    except CurveError as exc:
        if waited:
            raise
        raise CurveError(
            f"{exc}. If MagCache Calibrate is recording it in this workflow, connect the sampler's LATENT to "
            "'samples' so the plot waits for the run"
        ) from None


def _family_preset(curve: MagnitudeCurve) -> MagnitudeCurve | None:
    """The preset of the curve's own family (a stand-in of another family is not drawn)."""
    if curve.name in catalog.preset_names():
        return None
    family = family_by_key(str(curve.metadata.get("architecture")))
    width = (curve.metadata.get("fingerprint") or {}).get("width")
    name = family.auto_curve(width if isinstance(width, int) else None) if family is not None else None
    if name is None or family is None or family.stand_in:
        return None
    preset = catalog.load_preset(name)
    same = preset.metadata.get("architecture") == curve.metadata.get("architecture") and preset.level == curve.level
    return preset if same else None


def _subtitle(curve: MagnitudeCurve, runs: int) -> str:
    meta = curve.metadata
    parts = [str(meta.get("architecture") or "?")]
    if meta.get("model_config"):
        parts[0] += f" ({meta['model_config']})"
    if runs:
        last = meta["runs"][-1]
        cfg = last.get("cfg")
        parts.append(f"{runs} run(s), last: {last.get('steps')} steps, {last.get('sampler')}/{last.get('scheduler')}")
        if cfg is not None:
            parts.append(f"cfg {cfg:g}")
        parts.append(str(last.get("date", "")))
    else:
        parts.append(f"{curve.steps} sigmas")
    return ", ".join(p for p in parts if p)
