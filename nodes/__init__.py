"""The pack's node classes: thin layers that validate inputs, build a config and attach it to a clone.

``magcache_node`` (MagCache), ``calibrate_node`` (MagCache Calibrate, Curve
Plot), ``demo_nodes`` (the embedded tiny model's demo); ``mappings`` gathers
them for ComfyUI. Kept free of imports, so loading one module does not load
ComfyUI's node machinery for the others.
"""
