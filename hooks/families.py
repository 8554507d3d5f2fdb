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

    attr: str  # attribute of the diffusion model holding the blocks (dotted when nested)
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
_NO_HOOKS = "ComfyUI's code for it has neither block patches nor a diffusion-model wrapper"


def _wan(name: str, configs: tuple[str, ...], curve: str, wide: str | None = None, **kw: Any) -> Family:
    kw.setdefault("classes", ("WanModel",))
    kw.setdefault("between_block_inputs", _WAN_BETWEEN)
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


#: Stand-in curves: published curves of other flow models for families that
#: have none, and for the output level a curve MagCache Calibrate recorded on
#: the pack's embedded tiny Wan (see calibration/presets/PROVENANCE.md).
_VIDEO = "wan2.1_t2v_1.3B"
_IMAGE = "flux"
_OUTPUT = "tiny_wan_output"
#: The curve a block-level run uses when it moves to the output level (its block curve does not fit there).
OUTPUT_STAND_IN = _OUTPUT
#: Wan inputs that ComfyUI applies between blocks: VACE hints, S2V / WanDancer
#: audio, Animate face features.
_WAN_BETWEEN = ("vace_context", "audio_embed", "face_pixel_values")


def _stand_in(name: str, classes: tuple[str, ...], stacks: tuple[Stack, ...], curve: str, **kw: Any) -> Family:
    return Family(name, classes, stacks, curve=curve, stand_in=True, **kw)


def _one(attr: str, key: str = "img") -> tuple[Stack, ...]:
    return (Stack(attr, _DOUBLE, key=key),)


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
    ),
    _wan(
        "Wan 2.1 I2V / FLF2V / Fun / Camera",
        ("WAN21_I2V", "WAN21_FunControl2V", "WAN21_Camera", "WAN22_Camera"),
        "wan2.1_i2v_480p_14B",
    ),
    # HuMo hands its audio to the blocks themselves: nothing is added between them.
    _wan("Wan 2.1 HuMo", ("WAN21_HuMo",), _VIDEO, "wan2.1_t2v_14B", stand_in=True, between_block_inputs=()),
    _wan(
        "Wan 2.x variants (S2V, Animate, Animate 2, SCAIL, WanDancer, FlowRVS)",
        ("WAN22_S2V", "WAN22_Animate", "WAN_Animate2", "WAN21_SCAIL", "WAN22_WanDancer", "WAN21_FlowRVS"),
        _VIDEO,
        "wan2.1_t2v_14B",
        stand_in=True,
    ),
    _wan("Wan 2.2 TI2V 5B", ("WAN22_T2V",), "wan2.2_ti2v_5B"),
    _wan("Wan 2.1 / 2.2 T2V", (), "wan2.1_t2v_1.3B", "wan2.1_t2v_14B"),
    # -- Flux-shaped: double-stream then single-stream blocks.
    _flux_like("Chroma Radiance", ("Chroma",), "Chroma", "chroma", configs=("ChromaRadiance",), stand_in=True),
    _flux_like("Chroma", ("Chroma",), "Chroma", "chroma"),
    _flux_like("Flux.2", ("Flux",), "Flux", _IMAGE, configs=("Flux2",), stand_in=True),
    _flux_like("LongCat-Image", ("Flux",), "Flux", _IMAGE, configs=("LongCatImage",), stand_in=True),
    _flux_like("Flux.1", ("Flux",), "Flux", "flux"),
    _flux_like("HunyuanVideo 1.5", ("HunyuanVideo",), "HunyuanVideo", "hunyuan_video1.5", configs=("HunyuanVideo15",)),
    _flux_like(
        "HunyuanImage 2.1",
        ("HunyuanVideo",),
        "HunyuanVideo",
        "hunyuan_video",
        configs=("HunyuanImage21", "HunyuanImage21Refiner"),
        stand_in=True,
    ),
    _flux_like("HunyuanVideo", ("HunyuanVideo",), "HunyuanVideo", "hunyuan_video"),
    Family("Qwen-Image", ("QwenImageTransformer2DModel",), _one("transformer_blocks"), curve="qwen_image"),
    # -- no published curve: another flow model's curve stands in.
    _stand_in("LTX-2 (video and audio)", ("LTXAVModel",), _one("transformer_blocks"), _VIDEO),
    _stand_in("LTX-Video", ("LTXVModel",), _one("transformer_blocks"), _VIDEO),
    _stand_in("Mochi", ("AsymmDiTJoint",), _one("blocks"), _VIDEO),
    _stand_in("SD3 / SD3.5", ("OpenAISignatureMMDITWrapper",), _one("joint_blocks"), _IMAGE),
    _stand_in(
        "AuraFlow",
        ("comfy.ldm.aura.mmdit.MMDiT",),
        (Stack("double_layers", _DOUBLE), Stack("single_layers", _SINGLE, tokens=Tokens.FIND)),
        _IMAGE,
    ),
    _stand_in("MageFlow", ("MageFlowTransformer2DModel",), _one("transformer_blocks"), _IMAGE),
    _stand_in("Lens", ("LensTransformer2DModel",), _one("transformer_blocks"), _IMAGE),
    _stand_in("JoyImage", ("JoyImageTransformer3DModel",), _one("double_blocks"), _IMAGE),
    _stand_in("MiniMax H3 (video and audio)", ("MiniMaxH3Model",), _one("blocks"), _VIDEO),
    _stand_in("HiDream O1", ("HiDreamO1Transformer",), _one("language_model.layers", key="x"), _IMAGE),
    # HunyuanDiT is v-prediction: no flow model's curve fits; calibrate first.
    Family("HunyuanDiT", ("HunYuanDiT",), _one("blocks")),
    # -- output level: no block patches in ComfyUI's code, but a diffusion-model wrapper.
    _stand_in("Lumina 2 / Z-Image", ("NextDiT",), (), _OUTPUT),
    _stand_in("HiDream I1", ("HiDreamImageTransformer2DModel",), (), _OUTPUT),
    _stand_in("Cosmos Predict2 / Anima", ("MiniTrainDIT",), (), _OUTPUT),
    _stand_in("Kandinsky 5", ("Kandinsky5",), (), _OUTPUT),
    _stand_in("Krea 2", ("comfy.ldm.krea2.model.SingleStreamDiT",), (), _OUTPUT),
    _stand_in("Ideogram 4", ("Ideogram4Transformer",), (), _OUTPUT),
    _stand_in("PixelDiT", ("PixDiT_T2I",), (), _OUTPUT),
    # EDM / v-prediction models: a flow model's curve does not fit; calibrate first.
    Family("Cosmos 1", ("GeneralDIT",)),
    Family("CogVideoX", ("CogVideoXTransformer3DModel",)),
    # -- not served, with the reason.
    Family("PixArt", ("PixArtMS",), unsupported=_NO_HOOKS),
    Family("OmniGen 2 / Boogu", ("OmniGen2Transformer2DModel", "BooguTransformer2DModel"), unsupported=_NO_HOOKS),
    Family("ERNIE-Image", ("ErnieImageModel",), unsupported=_NO_HOOKS),
    Family("ACE-Step 1.5", ("AceStepConditionGenerationModel",), unsupported=_NO_HOOKS),
    Family(
        "Stable Audio / ACE-Step",
        ("AudioDiffusionTransformer", "ACEStepTransformer2DModel"),
        unsupported="audio models are out of this pack's scope",
    ),
    Family(
        "Hunyuan3D 2.1",
        ("HunYuanDiTPlain",),
        unsupported="its block patches return a tensor where ComfyUI's other models return a dict",
    ),
    Family("SeedVR2", ("NaDiT",), unsupported="a one-step restorer: nothing to skip"),
)


def blocks_of(diffusion_model: Any, attr: str) -> Any:
    """The block list at ``attr`` (dotted for nested lists, e.g. ``language_model.layers``), or None."""
    obj = diffusion_model
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _names(obj: Any, cls: type | None = None) -> list[str]:
    """Class names of ``cls`` (default ``obj``'s type) and its bases, plain and module-qualified (two ComfyUI
    classes share "MMDiT")."""
    mro = (cls if cls is not None else type(obj)).__mro__
    return [c.__name__ for c in mro] + [f"{c.__module__}.{c.__name__}" for c in mro]


def sampled_class(patcher: Any) -> type:
    """The class of the diffusion model as ``patcher`` will run it.

    ComfyUI leaves the object patches of the last model it loaded on the
    shared live model until it loads another clone; a node that swapped the
    class (RES4LYF's ReWanPatcher) leaves that class on the live object. The
    patcher knows what its own run gets: its own object patch of the class if
    it has one, else the original kept while another clone's patch is applied
    (``ModelPatcher.get_model_object``, the API the model's nodes use).
    """
    get = getattr(patcher, "get_model_object", None)
    if get is not None:
        try:
            cls = get("diffusion_model.__class__")
        except AttributeError:
            cls = None
        if isinstance(cls, type):
            return cls
    return type(patcher.model.diffusion_model)


def family_of(diffusion_model: Any, model_config: Any = None, model_class: type | None = None) -> Family | None:
    """The table entry for a loaded model, or None when it has none.

    Matched on the diffusion model's class (``model_class`` where the live
    object's is not the one the run samples, see :func:`sampled_class`) and
    its base classes, then on the model config's. A block-level entry is
    returned only when its block lists exist on the instance, so a renamed
    attribute in a future ComfyUI leaves the model alone instead of patching
    the wrong blocks.
    """
    classes = _names(diffusion_model, model_class)
    configs = _names(model_config) if model_config is not None else []
    for family in FAMILIES:
        if not any(c in classes for c in family.classes):
            continue
        if family.configs and not any(c in configs for c in family.configs):
            continue
        for stack in family.stacks:
            blocks = blocks_of(diffusion_model, stack.attr)
            if blocks is None or not hasattr(blocks, "__len__"):
                return None
        return family
    return None


def family_by_key(key: str) -> Family | None:
    """The first family whose layout is ``key`` (a curve's recorded ``architecture``)."""
    return next((f for f in FAMILIES if f.key == key), None)


def describe_unsupported(model: Any, family: Family | None, model_class: type | None = None) -> str:
    """Why the pack leaves a loaded model alone, for the log line."""
    if family is not None and family.unsupported:
        return f"{family.name} is not supported: {family.unsupported}"
    cls = model_class if model_class is not None else type(model.model.diffusion_model)
    return (
        f"{cls.__name__} (model config {type(model.model.model_config).__name__}) "
        "is a model this version of the pack does not know"
    )


def model_width(diffusion_model: Any) -> int | None:
    """The hidden size of a diffusion model, under whichever name its class uses."""
    for attr in ("dim", "hidden_size", "inner_dim", "model_dim"):
        value = getattr(diffusion_model, attr, None)
        if isinstance(value, int):
            return value
    return None
