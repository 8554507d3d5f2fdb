"""The methods the benchmark measures the pack against, one file each, written here from their papers.

None of them is in the node. Each file exports ``lines(context)``: the benchmark's
lines for that peer (:class:`~.common.Line`). Peers that are a schedule plus a
reuse the engine already has (uniform schedules, Spectrum's dense-early
schedule with its Chebyshev forecast, a LeMiCa-style minimax plan, the
paper's MagCache rule) are engine configurations; the ones that act
differently (TaylorSeer's forecast of the stack's output, First Block Cache's
decision after the first block) are methods of their own on the pack's hooking
layer (``hooks/``: the same block patches and wrappers MagCache uses, no
patching of the engine). ComfyUI's EasyCache and LazyCache are its own nodes.
"""
