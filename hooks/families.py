"""Per-architecture table: which blocks form the stack and where the image tokens are.

MagCache replaces the whole block stack on a skipped call. ComfyUI's DiTs let a
node replace any block through ``transformer_options["patches_replace"]["dit"]``
under the key ``(patch_name, index)``; the model passes the block's inputs as a
dict and reads the hidden states back from the returned dict. To skip the
stack we need, per architecture: the block lists in execution order, the patch
name of each, the dict key of the hidden states, and, for single-stream blocks
that run on text and image tokens concatenated, which end holds the image tokens.

Families are recognised from ComfyUI's own model classes, so there is no
model-type dropdown for users to set wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Tokens(Enum):
    """Where the image tokens sit in a block's hidden-state tensor (dim 1)."""

    ALL = "all"  # the tensor holds image tokens only
    HEAD = "head"  # image tokens first, text tokens after
    TAIL = "tail"  # text tokens first, image tokens after


@dataclass(frozen=True)
class Stack:
    """One ``nn.ModuleList`` of blocks that the model runs in order."""

    attr: str  # attribute of the diffusion model holding the blocks
    patch_name: str  # "double_block" or "single_block"
    key: str = "img"  # dict key of the hidden states in the patch's args and result
    tokens: Tokens = Tokens.ALL


@dataclass(frozen=True)
class Architecture:
    """How to skip the block stack of one diffusion-model class."""

    name: str
    stacks: tuple[Stack, ...]
    # Model inputs (keyword arguments of ``apply_model``) that inject features
    # between blocks; when present, skipping the stack would be wrong.
    between_block_inputs: tuple[str, ...] = ()


_DOUBLE = "double_block"
_SINGLE = "single_block"

#: Keyed by the class name of ``model.diffusion_model``.
ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("WanModel", (Stack("blocks", _DOUBLE),)),
        Architecture("VaceWanModel", (Stack("blocks", _DOUBLE),), between_block_inputs=("vace_context",)),
        Architecture(
            "HunyuanVideo", (Stack("double_blocks", _DOUBLE), Stack("single_blocks", _SINGLE, tokens=Tokens.HEAD))
        ),
        Architecture("Flux", (Stack("double_blocks", _DOUBLE), Stack("single_blocks", _SINGLE, tokens=Tokens.TAIL))),
        Architecture("Chroma", (Stack("double_blocks", _DOUBLE), Stack("single_blocks", _SINGLE, tokens=Tokens.TAIL))),
        Architecture("QwenImageTransformer2DModel", (Stack("transformer_blocks", _DOUBLE),)),
        Architecture("LTXVModel", (Stack("transformer_blocks", _DOUBLE),)),
        Architecture("AsymmDiTJoint", (Stack("blocks", _DOUBLE),)),
        Architecture("OpenAISignatureMMDITWrapper", (Stack("joint_blocks", _DOUBLE),)),
        Architecture("MMDiT", (Stack("double_layers", _DOUBLE), Stack("single_layers", _SINGLE, tokens=Tokens.TAIL))),
        Architecture("HunYuanDiT", (Stack("blocks", _DOUBLE),)),
    )
}

#: Families ComfyUI runs whose code offers no block patches: left alone, with a message.
UNSUPPORTED: dict[str, str] = {
    "NextDiT": "Lumina 2 / Z-Image",
    "HiDreamImageTransformer2DModel": "HiDream",
    "GeneralDIT": "Cosmos",
    "MiniTrainDIT": "Cosmos Predict2",
    # ComfyUI 0.8.0 calls Kandinsky 5 blocks from its patch path with a keyword
    # the block does not take, so any block patch fails inside ComfyUI itself.
    "Kandinsky5": "Kandinsky 5 (its block-patch path fails inside ComfyUI 0.8.0)",
}


def architecture_of(diffusion_model: Any) -> Architecture | None:
    """The table entry for a diffusion model, or None when it has none.

    Only entries whose block lists really exist on the instance are returned,
    so a renamed attribute in a future ComfyUI leaves the model alone instead
    of patching the wrong blocks.
    """
    arch = ARCHITECTURES.get(type(diffusion_model).__name__)
    if arch is None:
        return None
    for stack in arch.stacks:
        blocks = getattr(diffusion_model, stack.attr, None)
        if blocks is None or not hasattr(blocks, "__len__"):
            return None
    return arch


def describe_unsupported(diffusion_model: Any) -> str:
    """A user-facing name for a model the table does not cover."""
    cls = type(diffusion_model).__name__
    return UNSUPPORTED.get(cls, cls)


def model_width(diffusion_model: Any) -> int | None:
    """The hidden size of a diffusion model, under whichever name its class uses.

    It tells sizes of one family apart (Wan 2.1 1.3B is 1536 wide, 14B is 5120).
    """
    for attr in ("dim", "hidden_size", "inner_dim", "model_dim"):
        value = getattr(diffusion_model, attr, None)
        if isinstance(value, int):
            return value
    return None
