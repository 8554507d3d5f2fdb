"""Cached runs: MagCache's method on the shared hooks (``magcache``) and its decision rule (``policy``, pure)."""
