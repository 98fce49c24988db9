"""Comparison helpers shared by tests and benchmarks."""

from __future__ import annotations

import torch

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
