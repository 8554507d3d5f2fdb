"""The family table: what the hooks need to know about each kind of diffusion model ComfyUI loads.

A cached run acts in one of two places (:class:`Level`):

* ``BLOCK``: the model's transformer blocks, through ComfyUI's per-block
  replacement patches (``transformer_options["patches_replace"]["dit"]``, keyed
  ``(patch_name, index)``). The model hands each block's inputs to the patch as
  a dict and reads the hidden states back from the returned dict, so the entry
  names the block lists in execution order, the patch name of each and the
  dict key of the hidden states. Only the block stack is replaced on a skipped
  call; embeddings and the final head still run with the current timestep.
* ``OUTPUT``: the whole diffusion model, through ComfyUI's
  ``WrappersMP.DIFFUSION_MODEL`` wrapper, for models whose code offers no block
  patches. A skipped call returns the input plus the cached output residual.

Families are matched by what the model is: the diffusion model's class or any
of its base classes (so Wan's Camera, HuMo, S2V and Animate subclasses find the
Wan entry), narrowed where needed by the model-config class. There is no
model-type dropdown for users to set wrong. Adding a family is one entry.

Nothing here imports ComfyUI or torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Level(str, Enum):
    """Where a cached run acts; curves record the level they were measured at."""

    BLOCK = "block"
    OUTPUT = "output"


class Tokens(Enum):
    """Where the image tokens sit in the last stack's hidden states (dim 1)."""

    ALL = "all"  # the tensor holds image tokens only
    HEAD = "head"  # image tokens first, text tokens after
    TAIL = "tail"  # text tokens first, image tokens after
    #: text and image tokens concatenated in an order that ComfyUI has changed
    #: between versions: found at run time from the tensors (the image tokens
    #: leaving the previous stack are one end of what enters this one).
    FIND = "find"


@dataclass(frozen=True)
class Stack:
    """One ``nn.ModuleList`` of blocks that the model runs in order."""

    attr: str  # attribute of the diffusion model holding the blocks
    patch_name: str  # "double_block" or "single_block"
    key: str = "img"  # dict key of the hidden states in the patch's args and result
    tokens: Tokens = Tokens.ALL


@dataclass(frozen=True)
class Family:
    """How to cache one kind of diffusion model.

    ``layout`` names the block layout; a curve records it (metadata
    ``architecture``) and is refused on a model of another layout.
    ``curve`` is the preset ``auto`` picks; ``wide_curve`` replaces it for
    models at least ``wide_from`` wide (Wan 2.1 1.3B is 1536 wide, 14B 5120).
    ``stand_in`` marks ``curve`` as another model's curve: ``auto`` still
    attaches, and says once that a calibration of this model will be better.
    ``between_block_inputs`` are ``apply_model`` keyword arguments that add
    features between blocks: when one is present, skipping is switched off for
    the run. ``unsupported`` says why the family is not served (measured).
    """

    name: str
    classes: tuple[str, ...]
    stacks: tuple[Stack, ...] = ()
    layout: str = ""
    configs: tuple[str, ...] = ()
    curve: str | None = None
    stand_in: bool = False
    wide_curve: str | None = None
    wide_from: int = 4096
    between_block_inputs: tuple[str, ...] = ()
    unsupported: str | None = None

    @property
    def level(self) -> Level:
        return Level.BLOCK if self.stacks else Level.OUTPUT

    @property
    def key(self) -> str:
        """The layout name curves record; the first class name when the entry names none."""
        return self.layout or self.classes[0]

    def auto_curve(self, width: int | None) -> str | None:
        """The preset ``auto`` picks for a model of this family and hidden size."""
        if self.wide_curve is not None and width is not None and width >= self.wide_from:
            return self.wide_curve
        return self.curve


_DOUBLE = "double_block"
_SINGLE = "single_block"


def _wan(name: str, configs: tuple[str, ...], curve: str, wide: str | None = None, **kw: Any) -> Family:
    kw.setdefault("classes", ("WanModel",))
    return Family(
        name,
        stacks=(Stack("blocks", _DOUBLE),),
        configs=configs,
        curve=curve,
        wide_curve=wide,
        **kw,
    )


def _flux_like(name: str, classes: tuple[str, ...], layout: str, curve: str, **kw: Any) -> Family:
    stacks = (Stack("double_blocks", _DOUBLE), Stack("single_blocks", _SINGLE, tokens=Tokens.FIND))
    return Family(name, classes, stacks, layout=layout, curve=curve, **kw)


#: Most specific entries first: the first entry whose class (and config, where
#: given) matches is the model's family.
FAMILIES: tuple[Family, ...] = (
    # -- Wan: one class and its subclasses; the config tells the published curves apart.
    _wan(
        "Wan 2.1 VACE",
        (),
        "wan2.1_vace_1.3B",
        "wan2.1_vace_14B",
        classes=("VaceWanModel",),
        between_block_inputs=("vace_context",),
    ),
    _wan("Wan 2.1 I2V / FLF2V / Fun", ("WAN21_I2V", "WAN21_FunControl2V", "WAN21_Camera"), "wan2.1_i2v_480p_14B"),
    _wan("Wan 2.2 TI2V 5B", ("WAN22_T2V",), "wan2.2_ti2v_5B"),
    _wan("Wan 2.1 / 2.2 T2V", (), "wan2.1_t2v_1.3B", "wan2.1_t2v_14B"),
    # -- Flux-shaped: double-stream then single-stream blocks.
    _flux_like("Chroma / Chroma Radiance", ("Chroma",), "Chroma", "chroma"),
    _flux_like("Flux", ("Flux",), "Flux", "flux"),
    _flux_like("HunyuanVideo", ("HunyuanVideo",), "HunyuanVideo", "hunyuan_video"),
    Family(
        "Qwen-Image",
        ("QwenImageTransformer2DModel",),
        (Stack("transformer_blocks", _DOUBLE),),
        curve="qwen_image",
    ),
    # -- no published curve: another flow model's curve stands in.
    Family(
        "LTX-Video", ("LTXVModel",), (Stack("transformer_blocks", _DOUBLE),), curve="wan2.1_t2v_1.3B", stand_in=True
    ),
    Family("Mochi", ("AsymmDiTJoint",), (Stack("blocks", _DOUBLE),), curve="wan2.1_t2v_1.3B", stand_in=True),
    Family(
        "SD3 / SD3.5", ("OpenAISignatureMMDITWrapper",), (Stack("joint_blocks", _DOUBLE),), curve="flux", stand_in=True
    ),
    Family(
        "AuraFlow",
        ("MMDiT",),
        (Stack("double_layers", _DOUBLE), Stack("single_layers", _SINGLE, tokens=Tokens.FIND)),
        curve="flux",
        stand_in=True,
    ),
    # HunyuanDiT's noise scale differs from the flow models': no stand-in fits.
    Family("HunyuanDiT", ("HunYuanDiT",), (Stack("blocks", _DOUBLE),)),
)


def _names(obj: Any) -> list[str]:
    return [c.__name__ for c in type(obj).__mro__]


def family_of(diffusion_model: Any, model_config: Any = None) -> Family | None:
    """The table entry for a loaded model, or None when it has none.

    Matched on the diffusion model's class and its base classes, then on the
    model config's. A block-level entry is returned only when its block lists
    exist on the instance, so a renamed attribute in a future ComfyUI leaves
    the model alone instead of patching the wrong blocks.
    """
    classes = _names(diffusion_model)
    configs = _names(model_config) if model_config is not None else []
    for family in FAMILIES:
        if not any(c in classes for c in family.classes):
            continue
        if family.configs and not any(c in configs for c in family.configs):
            continue
        for stack in family.stacks:
            blocks = getattr(diffusion_model, stack.attr, None)
            if blocks is None or not hasattr(blocks, "__len__"):
                return None
        return family
    return None


def family_by_key(key: str) -> Family | None:
    """The first family whose layout is ``key`` (a curve's recorded ``architecture``)."""
    return next((f for f in FAMILIES if f.key == key), None)


def describe_unsupported(model: Any, family: Family | None) -> str:
    """Why the pack leaves a loaded model alone, for the log line."""
    if family is not None and family.unsupported:
        return f"{family.name} is not supported: {family.unsupported}"
    return (
        f"{type(model.model.diffusion_model).__name__} (model config {type(model.model.model_config).__name__}) "
        "is a model this version of the pack does not know"
    )


def model_width(diffusion_model: Any) -> int | None:
    """The hidden size of a diffusion model, under whichever name its class uses."""
    for attr in ("dim", "hidden_size", "inner_dim", "model_dim"):
        value = getattr(diffusion_model, attr, None)
        if isinstance(value, int):
            return value
    return None
