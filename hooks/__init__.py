"""The hooking layer MagCache and the calibration recorder share.

``families`` (what each model is and where a run can act on it), ``sites``
(block patches and the output wrapper, with their run-time checks),
``wrappers`` (ComfyUI's model wrappers, the per-run options), ``host`` (facts
about the running ComfyUI). Nothing here imports the pack's other packages.
"""
