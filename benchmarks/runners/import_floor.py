"""bench_engine's start-up floor: seconds to import torch, then transformers, in a fresh
interpreter, reported as one `BENCH-RESULT` JSON line.

    python benchmarks/runners/import_floor.py
"""

from __future__ import annotations

import json
import resource
import time


def main() -> None:
    t0 = time.perf_counter()
    import torch

    t1 = time.perf_counter()
    import tokenizers  # noqa: F401
    import transformers
    from transformers import AutoTokenizer  # noqa: F401

    t2 = time.perf_counter()
    result = {
        "torch_s": t1 - t0,
        "transformers_s": t2 - t1,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print("BENCH-RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
