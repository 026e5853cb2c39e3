"""One bare vLLM start, the cost a user pays before any plugin runs: import vLLM, start `LLM`
on the harness's tiny Llama (eager, float32, a small KV cache), generate one token, and report the
times as one `BENCH-RESULT` JSON line.

    python benchmarks/runners/bare_vllm_start.py

Nothing of the harness is imported but the tiny checkpoint's generator, so that the bare start
and the certification it is compared with serve the same model.
"""

from __future__ import annotations

import json
import os
import time


def main() -> None:
    t0 = time.perf_counter()
    from vllm import LLM, SamplingParams

    t1 = time.perf_counter()
    from conformance.fixtures.generators.checkpoint import tiny_checkpoint

    model = str(tiny_checkpoint("llama"))
    t2 = time.perf_counter()
    # float32 as the harness's engines (`conformance.probes.engine_run.SMALL_ENGINE`): the same
    # model served the same way, and bfloat16 attention kills the worker on AMX CPUs.
    llm = LLM(model=model, enforce_eager=True, kv_cache_memory_bytes=64 << 20, dtype="float32")
    llm.generate(["hello"], SamplingParams(max_tokens=1, temperature=0))
    t3 = time.perf_counter()
    result = {"import_s": t1 - t0, "llm_first_token_s": t3 - t2}
    print("BENCH-RESULT " + json.dumps(result), flush=True)
    core = getattr(llm.llm_engine, "engine_core", None)  # vLLM 0.32's LLM has no shutdown()
    (getattr(llm, "shutdown", None) or core.shutdown)()
    os._exit(0)  # engine threads must not hold the process open


if __name__ == "__main__":
    main()
