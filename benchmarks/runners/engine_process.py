"""One bench_engine process: import the engine, start `LLM`, generate, and report times, peak
memory and the greedy token ids as one `BENCH-RESULT` JSON line, last.

    python benchmarks/runners/engine_process.py CONFIG_JSON

Only the standard library and the engine under test are imported, so that this runs in the
vLLM virtualenv too.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import time
from typing import Any


def descendant_hwm() -> dict[int, tuple[str, int]]:
    """{pid: (name, VmHWM KiB)} of the live descendants (Linux /proc; empty elsewhere)."""
    parents, info = {}, {}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(ln.split(":", 1) for ln in f if ":" in ln)
        except OSError:
            continue
        parents[pid] = int(fields.get("PPid", "0"))
        hwm = fields.get("VmHWM", "0 kB").split()[0]
        info[pid] = (fields.get("Name", "?").strip(), int(hwm))
    mine, frontier = {}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in mine:
                mine[pid] = info[pid]
                frontier.append(pid)
    return mine


def run(llm: Any, sampling_params: Any, prompts: list[str], n: int) -> tuple[float, Any, Any]:
    """Seconds of one greedy `generate` of `n` tokens per prompt, the output and prompt ids."""
    t0 = time.perf_counter()
    greedy = sampling_params(temperature=0.0, max_tokens=n, ignore_eos=True)
    outs = llm.generate(prompts, greedy, use_tqdm=False)
    dt = time.perf_counter() - t0
    ids = [list(o.outputs[0].token_ids) for o in outs]
    return dt, ids, [list(o.prompt_token_ids) for o in outs]


def shutdown(llm: Any) -> None:
    """Shut the engine down, so that worker / engine-core processes are reaped and their peak
    RSS shows up in RUSAGE_CHILDREN (vLLM 0.32's LLM has no shutdown(); its engine-core client
    has)."""
    stop = getattr(llm, "shutdown", None)
    if stop is None:
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        stop = getattr(core, "shutdown", None)
    if stop is not None:
        stop()


def main(argv: list[str]) -> None:
    cfg = json.loads(argv[0])
    t_start = time.perf_counter()
    if cfg["mount"]:
        from reference.surface import mount

        mount()
    from vllm import LLM, SamplingParams

    t_import = time.perf_counter() - t_start
    t0 = time.perf_counter()
    llm = LLM(model=cfg["model"], **cfg["kwargs"])
    t_init = time.perf_counter() - t0
    _, first_ids, _ = run(llm, SamplingParams, cfg["prompts"][:1], 1)
    ttfo = time.perf_counter() - t0
    n = cfg["max_tokens"]
    single_s, single_ids, _ = run(llm, SamplingParams, cfg["prompts"][:1], n)
    batch_s, batch_ids, prompt_ids = run(llm, SamplingParams, cfg["prompts"], n)
    descendants = descendant_hwm()
    shutdown(llm)
    del llm
    gc.collect()
    time.sleep(0.5)
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = {
        "import_s": t_import,
        "init_s": t_init,
        "ttfo_s": ttfo,
        "single_s": single_s,
        "single_tokens": sum(map(len, single_ids)),
        "batch_s": batch_s,
        "batch_tokens": sum(map(len, batch_ids)),
        "peak_rss_self_kib": self_kib,
        "peak_rss_children_kib": child_kib,
        "descendants_hwm_kib": descendants,
        "peak_rss_tree_sum_kib": self_kib + sum(h for _, h in descendants.values()),
        "first_ids": first_ids,
        "single_ids": single_ids,
        "batch_ids": batch_ids,
        "prompt_ids": prompt_ids,
    }
    print("BENCH-RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.stdout.flush()
    # Skip interpreter shutdown: an engine's leftover threads or processes must not hang it.
    os._exit(0)
