"""bench_certify's `profile` part, in the reference interpreter: one certification in-process
with every probe timed, and optionally the probe floors. Prints one `BENCH-RESULT` JSON line.

    python benchmarks/runners/certify_profile.py FIXTURE [floors]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

#: `engine_run_phases` as a probe `call`: the probe interpreter imports it from the checkout.
PHASES_CALL = "benchmarks.runners.certify_profile:engine_run_phases"


def engine_run_phases() -> None:
    """A reference probe doing what an engine-run check does (general.models-run and
    platform.worker-runs build this LLM), phase by phase: where its 10-15 s go."""
    t0 = time.perf_counter()
    import torch  # noqa: F401

    t1 = time.perf_counter()
    import transformers  # noqa: F401
    from transformers import AutoConfig, AutoTokenizer  # noqa: F401

    t2 = time.perf_counter()
    from vllm import LLM, SamplingParams

    from conformance.fixtures.generators.checkpoint import tiny_checkpoint
    from conformance.probes.runtime import PROBE

    path = str(tiny_checkpoint("llama"))
    t3 = time.perf_counter()
    llm = LLM(
        model=path,
        max_num_seqs=2,
        max_model_len=128,
        distributed_executor_backend="uni",
        kv_cache_memory_bytes=64 << 20,
    )
    t4 = time.perf_counter()
    llm.generate(["Hello", "abc"], SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
    t5 = time.perf_counter()
    llm.shutdown()
    PROBE.result.update(
        {
            "import_torch_s": t1 - t0,
            "import_transformers_s": t2 - t1,
            "llm_init_s": t4 - t3,
            "generate_s": t5 - t4,
        }
    )


def profile(fixture: str) -> dict[str, Any]:
    """Certify `fixture` on the reference in-process, recording each probe's wall time, the
    time its code ran and the check that started it."""
    import conformance.context as context
    import conformance.runner as runner
    from conformance.target import resolve_target

    current: dict[str, str | None] = {"check": None}
    probes: list[dict[str, Any]] = []
    plain_probe, plain_run = context.run_probe, runner.run_planned

    def timed_probe(*args: Any, **kwargs: Any) -> Any:
        result = plain_probe(*args, **kwargs)
        probes.append(
            {
                "check": current["check"],
                "wall_s": result.wall_s,
                "code_s": result.code_s,
                "status": result.status,
            }
        )
        return result

    def run_planned(session: Any, item: Any, expected_failures: Any = None) -> Any:
        current["check"] = item.check.id
        return plain_run(session, item, expected_failures)

    context.run_probe = timed_probe
    runner.run_planned = run_planned
    started = time.perf_counter()
    results = runner.run_checks(resolve_target(fixture), "reference")
    return {
        "run_s": time.perf_counter() - started,
        "probes": probes,
        "checks": [{"id": r.id, "status": r.status, "duration_s": r.duration_s} for r in results],
    }


def floors() -> dict[str, dict[str, Any]]:
    """Median of 3 probes each: an empty one (the start-up every probe pays) and
    `engine_run_phases`."""
    from conformance.probe import run_probe

    out = {}
    for name, probe in (("empty", {"code": "pass"}), ("engine-run phases", {"call": PHASES_CALL})):
        runs = [run_probe(**probe, engine="reference", timeout=600) for _ in range(3)]
        floor = {
            "wall_s": statistics.median(r.wall_s for r in runs),
            "code_s": statistics.median(r.code_s or 0.0 for r in runs),
            "status": [r.status for r in runs],
        }
        for key in runs[0].values:
            floor[key] = statistics.median(r.values.get(key, 0.0) for r in runs)
        out[name] = floor
    return out


def main(argv: list[str]) -> int:
    fixture, rest = argv[0], argv[1:]
    out = profile(fixture)
    if rest == ["floors"]:
        out["floors"] = floors()
    print("BENCH-RESULT " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
