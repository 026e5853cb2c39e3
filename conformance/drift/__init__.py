"""API drift: a per-release index of vLLM's API and a static scan of a plugin's use of it.

`index` reads the shipped index (built from vLLM's source distributions by `build_index`),
`scan` reads a plugin's source without importing it, and `analysis` says which releases
each of the plugin's imports and overrides holds on.
"""
