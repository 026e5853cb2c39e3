"""The Triton RMSNorm kernel behind `RMSNorm.forward_cuda`, compared with `forward_native`.

On CPU the kernel runs in Triton's interpreter, which must be switched on (`TRITON_INTERPRET=1`)
before Triton is imported, so those comparisons run in one subprocess per module. On a GPU
(`-m gpu`) the compiled kernel runs on CUDA tensors in this process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from reference.ops import triton_rmsnorm  # noqa: E402
from reference.ops.layernorm import RMSNorm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "float16", "bfloat16")
#: Hidden sizes: tiny, non-powers of two, and one past MAX_FUSED_SIZE (the two-pass loop).
SHAPES = ((1, 1), (3, 5), (4, 96), (2, 3, 1000), (7, 4096), (2, triton_rmsnorm.MAX_FUSED_SIZE + 3))
#: (rtol, atol) against forward_native. The interpreter rounds float32 -> bfloat16 by
#: truncation (the GPU rounds to nearest), so bfloat16 may be off by one unit in the last place.
TOLERANCES = {"float32": (1e-5, 1e-5), "float16": (2e-3, 2e-3), "bfloat16": (2e-2, 2e-2)}
CASES = [
    (dtype, shape, residual) for dtype in DTYPES for shape in SHAPES for residual in (False, True)
]


def case_id(case: tuple[str, tuple[int, ...], bool]) -> str:
    dtype, shape, residual = case
    return f"{dtype}-{'x'.join(map(str, shape))}-{'residual' if residual else 'plain'}"


INTERPRETED = textwrap.dedent(
    """
    import json, logging, sys
    import torch
    from reference.ops.layernorm import RMSNorm

    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("vllm").addHandler(handler)

    results = {}
    for dtype_name, shape, with_residual in json.loads(sys.argv[1]):
        dtype = getattr(torch, dtype_name)
        gen = torch.Generator().manual_seed(len(results))
        norm = RMSNorm(shape[-1], eps=1e-5, dtype=dtype)
        norm.weight.data = torch.randn(shape[-1], generator=gen).to(dtype)
        x = (torch.randn(shape, generator=gen) * 3).to(dtype)
        residual = torch.randn(shape, generator=gen).to(dtype) if with_residual else None
        x_before = x.clone()
        # forward_cuda on CPU tensors: the interpreter makes the kernel run, no fallback.
        got = norm.forward_cuda(x, residual)
        want = norm.forward_native(x, residual)
        got, want = (got, want) if with_residual else ((got,), (want,))
        key = json.dumps([dtype_name, shape, with_residual])
        results[key] = {
            "outputs": [
                {
                    "dtype": [str(g.dtype), str(w.dtype)],
                    "shape": [list(g.shape), list(w.shape)],
                    "got": g.float().flatten().tolist(),
                    "want": w.float().flatten().tolist(),
                }
                for g, w in zip(got, want)
            ],
            "input_unchanged": torch.equal(x, x_before),
        }
    print(json.dumps({"results": results, "warnings": warnings}))
    """
)


@pytest.fixture(scope="module")
def interpreted() -> dict[str, Any]:
    """Every case run once through the interpreter in a subprocess: {case key: outputs}."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cases = json.dumps([[d, list(s), r] for d, s, r in CASES])
    proc = subprocess.run(
        [sys.executable, "-c", INTERPRETED, cases],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"the interpreter run failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_the_interpreted_kernel_matches_forward_native(interpreted, case):
    dtype, shape, residual = case
    result = interpreted["results"][json.dumps([dtype, list(shape), residual])]
    assert result["input_unchanged"], "the kernel must not write into its inputs"
    assert len(result["outputs"]) == (2 if residual else 1)
    rtol, atol = TOLERANCES[dtype]
    for output in result["outputs"]:
        got_dtype, want_dtype = output["dtype"]
        assert got_dtype == want_dtype, "the same dtype as forward_native (type promotion)"
        assert output["shape"][0] == output["shape"][1] == list(shape)
        torch.testing.assert_close(
            torch.tensor(output["got"]), torch.tensor(output["want"]), rtol=rtol, atol=atol
        )


def test_interpreted_forward_cuda_used_the_kernel_without_falling_back(interpreted):
    assert not [w for w in interpreted["warnings"] if "forward_native" in w]


# --------------------------------------------------------------------------------------------
# Fallbacks and errors (in this process: no kernel runs, so Triton need not be installed)


@pytest.fixture
def warnings_seen(monkeypatch):
    """WARNING messages from the layernorm logger; warning_once's memory is reset for each test."""
    from reference import logger as reference_logger

    monkeypatch.setattr(reference_logger, "_warned", set())
    captured: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: captured.append(record.getMessage())
    log = logging.getLogger("vllm.model_executor.layers.layernorm")
    log.addHandler(handler)
    yield captured
    log.removeHandler(handler)


def test_forward_cuda_falls_back_to_native_when_triton_is_missing(monkeypatch, warnings_seen):
    monkeypatch.setattr(triton_rmsnorm, "_IMPORT_ERROR", "ModuleNotFoundError: No module 'triton'")
    norm = RMSNorm(8)
    x = torch.randn(2, 8)
    torch.testing.assert_close(norm.forward_cuda(x), norm.forward_native(x), rtol=0, atol=0)
    assert len(warnings_seen) == 1
    assert "forward_native" in warnings_seen[0]
    assert "pip install triton" in warnings_seen[0], "the fallback names the fix"


@pytest.mark.skipif(
    triton_rmsnorm.triton is None,
    reason=f"Triton is not importable ({triton_rmsnorm._IMPORT_ERROR}): the fallback then names "
    "the missing Triton, not the CPU tensor",
)
def test_forward_cuda_falls_back_for_cpu_tensors_outside_the_interpreter(
    monkeypatch, warnings_seen
):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    norm = RMSNorm(8)
    x, residual = torch.randn(2, 8), torch.randn(2, 8)
    got, want = norm.forward_cuda(x, residual), norm.forward_native(x, residual)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert warnings_seen and "'cpu'" in warnings_seen[0]


def test_forward_cuda_falls_back_for_dtypes_the_kernel_does_not_take(monkeypatch, warnings_seen):
    monkeypatch.setattr(triton_rmsnorm, "unavailable_reason", lambda device=None: None)
    norm = RMSNorm(4, dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(norm.forward_cuda(x), norm.forward_native(x), rtol=0, atol=0)
    assert warnings_seen and "torch.float64" in warnings_seen[0]


def test_the_kernel_entry_refuses_what_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="cannot run") as excinfo:
        triton_rmsnorm.rms_norm(torch.randn(2, 4), None, 1e-6)
    assert "TRITON_INTERPRET=1" in str(excinfo.value) or "pip install triton" in str(excinfo.value)
    monkeypatch.setattr(triton_rmsnorm, "unavailable_reason", lambda device=None: None)
    with pytest.raises(ValueError, match=r"expected \(4,\)"):
        triton_rmsnorm.rms_norm(torch.randn(2, 4), torch.ones(5), 1e-6)
    with pytest.raises(ValueError, match="residual"):
        triton_rmsnorm.rms_norm(torch.randn(2, 4), None, 1e-6, torch.randn(3, 4))
    with pytest.raises(TypeError, match="forward_native"):
        triton_rmsnorm.rms_norm(torch.randn(2, 4, dtype=torch.float64), None, 1e-6)


# --------------------------------------------------------------------------------------------
# GPU: the compiled kernel on CUDA tensors

#: The normalised value is rounded to the input dtype before the weight; the kernel's and
#: torch's reciprocal square roots may differ in the last bit, which can flip that rounding:
#: one unit in the last place of float16 (2**-10 relative) or bfloat16 (2**-7).
GPU_TOLERANCES = {"float32": (1e-5, 1e-5), "float16": (2e-3, 2e-3), "bfloat16": (1.6e-2, 1.6e-2)}


@pytest.fixture
def cuda():
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", (*SHAPES, (4096, 4096)), ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_forward_cuda_matches_forward_native_on_the_gpu(
    cuda, warnings_seen, dtype, shape, with_residual
):
    torch_dtype = getattr(torch, dtype)
    gen = torch.Generator(device=cuda).manual_seed(0)
    norm = RMSNorm(shape[-1], eps=1e-5, dtype=torch_dtype).to(cuda)
    norm.weight.data = torch.randn(shape[-1], generator=gen, device=cuda).to(torch_dtype)
    x = (torch.randn(shape, generator=gen, device=cuda) * 3).to(torch_dtype)
    residual = (
        torch.randn(shape, generator=gen, device=cuda).to(torch_dtype) if with_residual else None
    )
    got, want = norm.forward_cuda(x, residual), norm.forward_native(x, residual)
    got, want = (got, want) if with_residual else ((got,), (want,))
    rtol, atol = GPU_TOLERANCES[dtype]
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.device == w.device
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol)
    assert not warnings_seen, "on a GPU with Triton, forward_cuda runs the kernel"


@pytest.mark.gpu
def test_forward_cuda_handles_non_contiguous_rows_on_the_gpu(cuda):
    norm = RMSNorm(96, dtype=torch.float16).to(cuda)
    x = torch.randn(8, 192, device=cuda, dtype=torch.float16)[:, ::2]  # stride 2 along rows
    torch.testing.assert_close(norm.forward_cuda(x), norm.forward_native(x), rtol=1e-3, atol=1e-3)
