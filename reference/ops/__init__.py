"""Custom ops: `CustomOp` (registration, out-of-tree replacement, dispatch) and in-tree layers.

The submodules need torch; this package itself imports nothing.
"""
