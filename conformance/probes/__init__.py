"""Everything that runs inside a probe interpreter, as ordinary modules.

Each module holds the probe functions of one check group. A probe function takes JSON-able
keyword arguments, runs plugin code (through `runtime.call_plugin`/`runtime.attempt`, so that
what goes wrong is blamed on its owner) and returns a dataclass defined beside it: the checks
read that observation's fields (`ctx.observe(function, ...)`). Modules here import `vllm`,
`torch` and the plugin only inside functions: the parent imports them too, without an engine.
"""
