"""LoRA-resolver checks: the resolvers a general plugin registers, asked for adapters in a probe.

One shared probe per entry point (`observe_resolvers`, conformance/probes/lora_resolver.py)
configures resolvers the way a server would (`VLLM_LORA_RESOLVER_CACHE_DIR`,
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`, and the plugin's own `conformance_setup(workdir)` hook
when its entry-point module defines one), runs the plugin, and asks every resolver it added
for unknown and out-of-root adapters.
"""

from __future__ import annotations

from conformance.context import CheckContext
from conformance.framework import check, fail, fail_on, skip
from conformance.probes.data import ExceptionInfo
from conformance.probes.lora_resolver import (
    BASE_MODEL,
    SETUP_HOOK,
    Judged,
    ResolverObservation,
    observe_resolvers,
)

#: The check every other one of the group requires: it judges the plugin's set-up and the
#: shape of each resolver (`resolve_lora` present and callable as the server calls it).
SHAPED = ("lora_resolver.async",)


def lora_run(ctx: CheckContext) -> ResolverObservation:
    """The shared probe's observations; fails the check if the plugin could not be set up,
    skips it if the plugin registers no resolver."""
    run = ctx.observe(
        observe_resolvers,
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"},
        purpose="that configures and calls the plugin",
    )
    if run.setup_error is not None:
        where = (
            f"The plugin's {SETUP_HOOK}(workdir) hook"
            if run.stage == SETUP_HOOK
            else "Loading and calling the plugin with a LoRA resolver configured"
        )
        fail_on(run.setup_error, f"{where} raised:")
    if not run.resolvers:
        hook = (
            f"its {SETUP_HOOK}(workdir) hook run"
            if run.hook
            else f"no {SETUP_HOOK}(workdir) hook, as its entry-point module defines none"
        )
        skip(
            "the plugin registers no LoRA resolver (tried with VLLM_LORA_RESOLVER_CACHE_DIR "
            f"set, VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 and {hook})"
        )
    return run


def _callable_resolvers(run: ResolverObservation) -> dict[str, Judged]:
    """Resolvers whose `resolve_lora` could be called as the server calls it."""
    return {k: v for k, v in run.judged.items() if v.callable}


def _label(name: str, info: Judged) -> str:
    return f"resolver {name!r} ({info.type})"


@check(
    "lora_resolver.async",
    title="every LoRA resolver the plugin registers has `async def resolve_lora(base_model_name, "
    "lora_name)`",
    fix="Subclass vllm.lora.resolver.LoRAResolver and define `async def resolve_lora(self, "
    "base_model_name, lora_name) -> LoRARequest | None`; run blocking I/O with "
    "`await asyncio.to_thread(...)`.",
    requires=("package.entry-points-resolve", "general.runs"),
)
def check_async(ctx: CheckContext) -> None:
    """The server awaits `resolver.resolve_lora(model_name, lora_name)` on its event loop for
    every request naming an unknown adapter; a plain `def` returns a value that cannot be
    awaited, and the request fails with a server error. The probe judges the resolvers the
    plugin adds to `LoRAResolverRegistry`, configured through `VLLM_LORA_RESOLVER_CACHE_DIR`
    (a temporary directory), `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`, and, when the plugin's
    entry-point module defines `conformance_setup(workdir: str) -> None`, that hook, called
    with a fresh directory before the plugin function so the plugin can point its own
    settings (e.g. its environment variable) at a directory under `workdir`."""
    run = lora_run(ctx)
    problems = []
    for name, info in sorted(run.judged.items()):
        if not info.has_method:
            problems.append(f"{_label(name, info)} has no resolve_lora method.")
        elif not info.is_async:
            problems.append(f"{_label(name, info)}: resolve_lora is not an `async def`.")
        elif info.binds is not None:
            problems.append(
                f"{_label(name, info)}: resolve_lora cannot be called as "
                f"resolve_lora(base_model_name, lora_name): {info.binds}."
            )
    if problems:
        fail("\n".join(problems))


@check(
    "lora_resolver.unknown-is-none",
    title="a LoRA resolver answers None for an adapter it does not have",
    fix="Return None from resolve_lora when the adapter is not found (missing directory, "
    "missing config, another base model); raise nothing.",
    requires=SHAPED,
)
def check_unknown_is_none(ctx: CheckContext) -> None:
    """The server asks each resolver in turn and moves on when one answers None; an exception
    raised inside `resolve_lora` is not caught, so the request fails with a server error
    instead of a 404, and the resolvers after it are never asked. The probe asks for names
    that no configured directory holds (plain and `org/name`). Resolvers are configured as
    for `lora_resolver.async`, including the optional `conformance_setup(workdir)` hook."""
    run = lora_run(ctx)
    problems = []
    raised: ExceptionInfo | None = None
    for name, info in sorted(_callable_resolvers(run).items()):
        for lora_name, reply in info.unknown.items():
            call = f"{_label(name, info)}: resolve_lora({BASE_MODEL!r}, {lora_name!r})"
            if reply.error is not None:
                problems.append(f"{call} raised {reply.error.headline}")
                raised = raised or reply.error
            elif reply.stalled is not None:
                problems.append(f"{call}: {reply.stalled}")
            elif not reply.none:
                problems.append(f"{call} answered {reply.repr} for an adapter nobody made.")
    if raised is not None:
        # The first traceback says where; later ones would only repeat it.
        fail_on(raised, "\n".join(problems) + "\nThe first exception:")
    if problems:
        fail("\n".join(problems))


@check(
    "lora_resolver.no-path-escape",
    title="a LoRA resolver never resolves a name to an adapter outside its directory",
    fix="Join the name to the root, take os.path.realpath of both, and return None unless the "
    "result lies strictly inside the root (reject absolute names, '..' and links that lead "
    "out).",
    requires=SHAPED,
)
def check_no_path_escape(ctx: CheckContext) -> None:
    """The adapter name comes from the request's `model` field, so any client picks it: a
    resolver that follows absolute names, `..` or symbolic links out of its directory loads
    whatever adapter (and whatever files) the server can read (vllm#46287). The probe plants
    a valid adapter for the served model outside every root, then asks for it by absolute
    path, by a `..` chain long enough to reach `/` from any root, by a relative path from
    each root, and through symbolic links it plants inside `VLLM_LORA_RESOLVER_CACHE_DIR`
    and inside the resolver's own directory (its `lora_cache_dir`, or any directory it holds,
    when that lies in the check's workdir). Any request returned is an escape; an exception
    is not (`lora_resolver.unknown-is-none` covers those). A plugin points its resolver at a
    directory under the check's workdir with the optional `conformance_setup(workdir)` hook."""
    run = lora_run(ctx)
    problems = []
    for name, info in sorted(_callable_resolvers(run).items()):
        escapes = [e for e in info.escapes if e.reply.answered]
        if escapes:
            lines = [
                f"  {e.label}: asked for {e.shown}, got lora_path {e.reply.real or e.reply.path!r}"
                for e in escapes
            ]
            problems.append(
                f"{_label(name, info)} answered a request for {len(escapes)} name(s) that lead "
                f"out of its directory (to the valid adapter the check planted at "
                f"{run.outside}):\n" + "\n".join(lines)
            )
    if problems:
        fail("\n".join(problems))
