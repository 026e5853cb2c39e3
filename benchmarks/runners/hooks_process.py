"""One bench_hooks process: a baseline engine and a plugin engine stepped alternately, every step
timed; prints one `BENCH-RESULT` JSON line, last.

    python benchmarks/runners/hooks_process.py CONFIG_JSON

It builds the baseline engine, then makes the plugin visible (overlay on sys.path, or the FQCN)
and builds the plugin engine. Both engines then get the same requests and are stepped
alternately, one step each (the order flips every step), so step k of one engine is timed
within milliseconds of step k of the other and a burst of load hits both alike. `AsyncLLM`s
run concurrently in one event loop, where their engine loops take turns by themselves.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

#: Seconds spent in the current step inside the plugin's methods and in the hook's stage.
cell = {"hook": 0.0, "sample": 0.0}

#: One entry per timed step: side, workload, round, k, seconds, hook, stage (stage seconds).
Steps = list[list[Any]]


def timed(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
    """`fn`, adding the seconds each call takes to `cell[key]`."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            cell[key] += time.perf_counter() - t

    return wrapper


def params(cfg: dict[str, Any], workload: str) -> Any:
    """Greedy sampling; the `active` workload asks the logits processors for the target."""
    from vllm import SamplingParams

    extra = {"target_token": cfg["target"]} if workload == "active" else None
    return SamplingParams(
        temperature=0.0, max_tokens=cfg["max_tokens"], ignore_eos=True, extra_args=extra
    )


def make_plugin_visible(cfg: dict[str, Any]) -> None:
    """Put the overlay on sys.path (and forget what discovery cached), and time the hooks."""
    if cfg.get("overlay_path"):
        sys.path.insert(0, cfg["overlay_path"])
        from reference.logits.loader import clear_caches
        from reference.plugins import clear_discovery_cache

        clear_caches()
        clear_discovery_cache()
    for target in cfg.get("hooks", []):
        module, _, qualname = target.partition(":")
        cls = getattr(importlib.import_module(module), qualname)
        for name in cfg["hook_methods"]:
            if name in vars(cls):
                setattr(cls, name, timed(vars(cls)[name], "hook"))


def order(k: int) -> tuple[str, str]:
    return ("base", "plugin") if k % 2 == 0 else ("plugin", "base")


def submit(cfg: dict[str, Any], llm: Any, workload: str) -> list[Any]:
    """The prompts' requests, added to `llm`'s engine core but not run."""
    # LLM.generate builds and validates the requests, then calls _run: take them there.
    taken: list[Any] = []

    def take(requests: list[Any]) -> None:
        for request in requests:
            llm.engine_core.add_request(request)
        taken.extend(requests)

    llm._run = take
    try:
        llm.generate(cfg["prompts"], params(cfg, workload))
    finally:
        del llm._run
    return taken


def interleaved(
    cfg: dict[str, Any],
    engines: dict[str, Any],
    workload: str,
    rnd: int,
    steps: Steps | None,
    forced: dict[str, list[bool]],
) -> None:
    """One batch on both `LLM`s, stepped alternately; timed into `steps` unless it is None."""
    reqs = {side: submit(cfg, engines[side], workload) for side in engines}
    gc.collect()
    k = 0
    while any(not r.finished for rs in reqs.values() for r in rs):
        for side in order(k):
            if all(r.finished for r in reqs[side]):
                continue
            cell["hook"] = cell["sample"] = 0.0
            t = time.perf_counter()
            engines[side].engine_core.step()
            dt = time.perf_counter() - t
            if steps is not None:
                steps.append([side, workload, rnd, k, dt, cell["hook"], cell["sample"]])
        k += 1
    for side, rs in reqs.items():
        forced.setdefault(f"{side} {workload}", []).append(
            all(t == cfg["target"] for r in rs for t in r.output_token_ids)
        )


def run_llm(
    cfg: dict[str, Any], kwargs: dict[str, Any], steps: Steps, forced: dict[str, list[bool]]
) -> dict[str, Any]:
    """Two `LLM`s stepped one step each in turn; a warm-up batch, then `rounds` timed ones."""
    from vllm import LLM

    engines = {"base": LLM(model=cfg["model"], **kwargs)}
    make_plugin_visible(cfg)
    engines["plugin"] = LLM(model=cfg["model"], **kwargs, **cfg.get("plugin_kwargs", {}))
    for w in cfg["workloads"]:
        interleaved(cfg, engines, w, -1, None, forced)  # warm-up
    for rnd in range(cfg["rounds"]):
        for w in cfg["workloads"]:
            interleaved(cfg, engines, w, rnd, steps, forced)
    info = {"use_v2_model_runner": engines["plugin"].vllm_config.use_v2_model_runner}
    for e in engines.values():
        e.shutdown()
    return info


def time_loop_turns(engines: dict[str, Any], steps: Steps) -> dict[str, Any]:
    """Patch `EngineCore.step` and `StatLoggerManager.record` so that each engine-loop turn,
    from the start of step() to the end of record() (no await in between, so the other
    engine's loop cannot run inside it), is timed into `steps`. Returns the state that says
    which round is being timed (`round`, -1 for none) and each side's step count (`k`)."""
    from reference.engine.core import EngineCore
    from reference.metrics import StatLoggerManager

    side_of = {}
    for side, e in engines.items():
        side_of[id(e.engine_core)] = side
        side_of[id(e.logger_manager)] = side
    turn: dict[str, float] = {}
    state: dict[str, Any] = {"round": -1, "k": {"base": 0, "plugin": 0}}
    step_fn, record_fn = EngineCore.step, StatLoggerManager.record

    def step(self: Any) -> Any:
        cell["hook"] = 0.0
        turn[side_of[id(self)]] = time.perf_counter()
        return step_fn(self)

    def record(self: Any, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return record_fn(self, *args, **kwargs)
        finally:
            end = time.perf_counter()
            side = side_of[id(self)]
            k = state["k"][side]
            state["k"][side] = k + 1
            if state["round"] >= 0:
                steps.append(
                    [side, "default", state["round"], k, end - turn[side], cell["hook"], end - t]
                )

    EngineCore.step = step
    StatLoggerManager.record = record
    return state


def run_async(cfg: dict[str, Any], kwargs: dict[str, Any], steps: Steps) -> dict[str, Any]:
    """Two `AsyncLLM`s in one event loop, each engine-loop turn timed; a warm-up round, then
    `rounds` timed ones."""
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    def build() -> Any:
        return AsyncLLM.from_engine_args(AsyncEngineArgs(model=cfg["model"], **kwargs))

    engines = {"base": build()}
    make_plugin_visible(cfg)
    engines["plugin"] = build()
    state = time_loop_turns(engines, steps)

    async def batch(side: str, tag: str) -> list[list[int]]:
        async def one(i: int, prompt: str) -> list[int]:
            last = None
            async for out in engines[side].generate(
                prompt, params(cfg, "default"), request_id=f"{tag}-{i}"
            ):
                last = out
            return list(last.outputs[0].token_ids)

        return await asyncio.gather(*(one(i, p) for i, p in enumerate(cfg["prompts"])))

    async def both(rnd: int) -> None:
        state["round"] = rnd
        state["k"] = {"base": 0, "plugin": 0}
        gc.collect()
        # Flip which engine's loop starts first every round: the first of the two loops to
        # run may be favoured (caches, the consumers' wake-ups), and that must cancel out.
        sides = list(engines) if rnd % 2 == 0 else list(engines)[::-1]
        await asyncio.gather(*(batch(side, f"{side}-{rnd}") for side in sides))

    loop = asyncio.new_event_loop()
    loop.run_until_complete(both(-1))  # warm-up
    for rnd in range(cfg["rounds"]):
        loop.run_until_complete(both(rnd))
    info = {
        side: [
            type(getattr(s, "per_engine_stat_loggers", {0: s})[0]).__name__
            for s in e.logger_manager.stat_loggers
        ]
        for side, e in engines.items()
    }
    for e in engines.values():
        e.shutdown()
    return info


def main(argv: list[str]) -> None:
    cfg = json.loads(argv[0])
    from reference.surface import mount

    mount()
    import torch

    random.seed(0)
    torch.manual_seed(0)
    import reference.engine.model_runner as model_runner

    # The sampling stage: logprobs, the logits processors' apply, greedy / random sampling.
    model_runner.sample = timed(model_runner.sample, "sample")
    kwargs = dict(cfg["common"])
    steps: Steps = []
    forced: dict[str, list[bool]] = {}
    if cfg["engine"] == "llm":
        info = run_llm(cfg, kwargs, steps, forced)
    else:
        info = run_async(cfg, kwargs, steps)
    print("BENCH-RESULT " + json.dumps({"steps": steps, "forced": forced, "info": info}))


if __name__ == "__main__":
    main(sys.argv[1:])
