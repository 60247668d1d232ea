"""The two gradient-error estimators compute what their docstrings say: the plug-in one
(E2) its identities and its (R − 1)/R bias, the reference-corrected one (E3) no bias."""

from __future__ import annotations

import torch

from tasks.gradient_errors import ExactErrors, errors_against_reference, reference_gradient

P, R = 3, 3
TRUTH = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
BIAS = torch.tensor([0.3, 0.0, -0.4], dtype=torch.float64)  # ‖b‖² = 0.25
SIGMA = 0.7  # per coordinate: E‖ĝ − E ĝ‖² = P σ²
BIAS2, VAR = float((BIAS * BIAS).sum()), P * SIGMA**2


def within(samples: torch.Tensor, expected: float, ses: float = 5.0) -> bool:
    """`expected` lies within `ses` Monte-Carlo standard errors of the samples' mean."""
    se = float(samples.std() / len(samples) ** 0.5)
    return abs(float(samples.mean()) - expected) < ses * se


def test_plug_in_errors_are_the_sample_identities_they_claim() -> None:
    gen = torch.Generator().manual_seed(0)
    truth = torch.randn(4, 6, generator=gen, dtype=torch.float64)  # 4 seeds
    draws = [truth + torch.randn(4, 6, generator=gen, dtype=torch.float64) for _ in range(5)]
    errors = ExactErrors(truth)
    for draw in draws:
        errors.add(draw)
    out = errors.finish()
    stacked = torch.stack(draws)  # (R, S, P)
    mean = stacked.mean(0)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)  # noqa: E731
    close(out["mse"], ((stacked - truth) ** 2).sum(-1).mean(0))
    close(out["bias2"], ((mean - truth) ** 2).sum(-1))
    close(out["var"], ((stacked - mean) ** 2).sum(-1).mean(0))  # divides by R
    close(out["mse"], out["bias2"] + out["var"])
    close(out["cos"], torch.nn.functional.cosine_similarity(stacked, truth, dim=-1).mean(0))


def test_plug_in_variance_is_biased_low_by_r_minus_1_over_r() -> None:
    gen = torch.Generator().manual_seed(1)
    replications = 20000  # as many "seeds", one batched computation
    truth = TRUTH.expand(replications, P)
    errors = ExactErrors(truth)
    for _ in range(R):
        errors.add(truth + BIAS + SIGMA * torch.randn(replications, P, generator=gen,
                                                      dtype=torch.float64))
    out = errors.finish()
    assert within(out["var"], (R - 1) / R * VAR)
    assert not within(out["var"], VAR)  # the bias the docstring names is there
    assert within(out["bias2"], BIAS2 + VAR / R)
    assert within(out["mse"], BIAS2 + VAR)


def test_errors_against_a_noisy_reference_are_unbiased() -> None:
    gen = torch.Generator().manual_seed(2)
    tau, r_ref = 1.5, 4  # the reference's per-coordinate noise and its draws
    rows: dict[str, list[float]] = {"mse": [], "bias2": [], "var": [], "se2": []}
    for _ in range(4000):
        ref, se2 = reference_gradient(TRUTH + tau * torch.randn(r_ref, P, generator=gen,
                                                                dtype=torch.float64))
        est = TRUTH + BIAS + SIGMA * torch.randn(R, P, generator=gen, dtype=torch.float64)
        out = errors_against_reference(est, ref, se2)
        for name in ("mse", "bias2", "var"):
            rows[name].append(out[name])
        rows["se2"].append(se2)
    values = {name: torch.tensor(v, dtype=torch.float64) for name, v in rows.items()}
    assert within(values["var"], VAR)  # divides by R − 1
    assert within(values["bias2"], BIAS2)
    assert within(values["mse"], BIAS2 + VAR)
    assert within(values["se2"], P * tau**2 / r_ref)
