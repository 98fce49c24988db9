"""Helpers shared by tests and benchmarks: comparisons with a tolerance, and killing a training run mid-way."""

from __future__ import annotations

import os

import torch

from innerloop.runs import Callback

# Relative-RMSE tolerances for long recurrences in low precision; fp32/fp64 use torch.testing defaults.
ERR_RATIO = {torch.float16: 5e-3, torch.bfloat16: 2e-2}


def err_ratio(ref: torch.Tensor, x: torch.Tensor) -> float:
    """Relative RMS error ``||x - ref|| / ||ref||`` computed in float64."""
    ref64, x64 = ref.detach().double(), x.detach().double()
    return ((x64 - ref64).pow(2).mean().sqrt() / ref64.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def assert_close(
    name: str,
    ref: torch.Tensor,
    x: torch.Tensor,
    ratio: float | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> None:
    """Compare ``x`` against ``ref``, print the max difference, and fail with a message naming ``name``.

    Args:
        name (str): what is being compared, shown in the log and the failure message.
        ref (Tensor): ground truth.
        x (Tensor): value under test; must have ``ref``'s shape.
        ratio (float, Optional): if given, check the relative RMS error instead of elementwise closeness
            (for low-precision recurrences). Default: None.
        atol, rtol (float, Optional): elementwise tolerances passed to ``torch.testing.assert_close``;
            ``None`` uses torch's defaults for the dtype. Default: None.
    """
    assert ref.shape == x.shape, f"{name}: shape {tuple(x.shape)} != reference {tuple(ref.shape)}"
    assert not torch.isnan(x).any(), f"{name}: NaN in tested value"
    diff = (x.detach().double() - ref.detach().double()).abs().max().item() if x.numel() else 0.0
    print(f"{name:>24s}  max|diff| {diff:.3e}  err_ratio {err_ratio(ref, x) if x.numel() else 0.0:.3e}")
    if ratio is not None:
        r = err_ratio(ref, x)
        assert r <= ratio, f"{name}: relative RMS error {r:.3e} > {ratio:.1e} (max|diff| {diff:.3e})"
        return
    if (atol is None) != (rtol is None):
        atol, rtol = atol or 0.0, rtol or 0.0
    torch.testing.assert_close(x.to(ref.dtype), ref, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")


def selective_scan_inputs(
    B: int, T: int, E: int, N: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
    with_d: bool = True, with_h0: bool = True, seed: int = 0,
) -> list[torch.Tensor | None]:
    """Random ``[u, delta, A, B, C, D, initial_state]`` for a selective-scan path, all requiring grad.

    Drawn in float64 from ``seed`` (so every dtype and device sees the same values): ``Δ = softplus(randn - 1)``,
    ``A = -exp(randn / 2)`` (negative, about ``[-3, -0.2]``), everything else standard normal; ``D`` and the initial
    state are None when ``with_d`` / ``with_h0`` is False.
    """
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    u, B_, C_ = r(B, T, E), r(B, T, N), r(B, T, N)
    delta = torch.nn.functional.softplus(r(B, T, E) - 1.0)
    A = -torch.exp(r(E, N) * 0.5)
    D, h0 = r(E), r(B, E, N)
    ins = [u, delta, A, B_, C_, D if with_d else None, h0 if with_h0 else None]
    return [None if t is None else t.to(device, dtype).requires_grad_() for t in ins]


def outputs_and_grads(fn, ins: list, dy: torch.Tensor, dh: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(y, final_state, *grads)`` of ``fn(*ins)`` for the loss ``sum(y * dy) + sum(final_state * dh)``; grads of
    every input that is not None, in order."""
    y, h = fn(*ins)
    assert y.dtype == ins[0].dtype, f"y comes back in {y.dtype}, not the input dtype {ins[0].dtype}"
    leaves = [t for t in ins if t is not None]
    return (y, h, *torch.autograd.grad((y * dy).sum() + (h * dh).sum(), leaves))


def shift_(tensors: list[torch.Tensor], direction: list[torch.Tensor], c: float) -> None:
    """``tensors += c * direction`` in place (no autograd)."""
    with torch.no_grad():
        for t, d in zip(tensors, direction):
            t.add_(c * d)


def check_directional_derivatives(f, tensors: list[torch.Tensor], grads, seed: int = 2, atol: float = 1e-7,
                                  rtol: float = 1e-6, directions: int = 3) -> None:  # fmt: skip
    """Assert ``<grad, v> == (f(w + eps v) - f(w - eps v)) / 2 eps`` (central finite difference, eps 1e-6) for
    ``directions`` random directions ``v``; ``f()`` evaluates the scalar at the current values of ``tensors``
    (shifted in place and restored). Use float64."""
    gen = torch.Generator().manual_seed(seed)
    eps = 1e-6
    for _ in range(directions):
        v = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in tensors]
        shift_(tensors, v, eps)
        plus = float(f())
        shift_(tensors, v, -2 * eps)
        minus = float(f())
        shift_(tensors, v, eps)
        want = torch.tensor((plus - minus) / (2 * eps), dtype=torch.float64)
        got = sum((g * d).sum() for g, d in zip(grads, v)).to(torch.float64)
        assert_close("directional derivative", want, got, atol=atol, rtol=rtol)


# (input index, wrong shape, expected message) for the selective-scan input checks on inputs of B=2, T=5, E=3, N=4
SCAN_BAD_SHAPES = [
    (0, (2, 5), "u must be"),
    (1, (2, 5, 4), "delta must be"),
    (2, (2, 4), "A must be"),
    (3, (2, 5, 3), "B must be"),
    (4, (2, 4, 4), "C must be"),
    (5, (4,), "D must be"),
    (6, (2, 3, 5), "initial_state must be"),
]


class SlowSteps(Callback):
    """A trainer callback that sleeps ``seconds`` after every step (numerically inert), so that a test can kill the
    process mid-run (:func:`kill_mid_run`)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, trainer: object, step: int, logs: dict) -> None:
        import time

        time.sleep(self.seconds)


def kill_mid_run(argv: list[str], checkpoint: str | os.PathLike, env: dict[str, str] | None = None,
                 timeout: float = 120.0, settle: float = 0.5) -> None:  # fmt: skip
    """Run ``argv`` (a training run in a child process whose steps are slowed by :class:`SlowSteps`), wait until the
    checkpoint folder ``checkpoint`` exists, let it run ``settle`` seconds more (steps logged after the checkpoint),
    then SIGKILL it: the test of exact resume after a crash that every trainer on the run scaffold gets.

    Raises:
        AssertionError: the child ended before it could be killed (its stderr is in the message) or did not die by
            SIGKILL.
    """
    import signal
    import subprocess
    import time
    from pathlib import Path

    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if Path(checkpoint).is_dir():
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the child ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        time.sleep(settle)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the child was not killed by SIGKILL (exit code {proc.returncode})"
