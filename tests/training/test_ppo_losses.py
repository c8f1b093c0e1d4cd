"""PPO's loss pieces against values worked out by hand on tiny fixed examples.

Every expected number below is derived in the comment beside it, not by running the code.
"""

from __future__ import annotations

import math

import pytest
import torch

from adapterhub.training.ppo.losses import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_shaped_rewards,
    masked_whiten,
    token_entropy,
    token_logprobs,
)


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_gae_lambda_one_gamma_one_is_return_minus_value() -> None:
    # Only the last token is rewarded (1.0); V = 0.5 everywhere; γ = λ = 1:
    # every advantage is (sum of future rewards) - V_t = 1 - 0.5 = 0.5, returns are 1.
    adv, ret = gae(t([0, 0, 1.0]), t([0.5, 0.5, 0.5]), t([1, 1, 1]), gamma=1.0, lam=1.0)
    assert torch.allclose(adv, t([0.5, 0.5, 0.5]))
    assert torch.allclose(ret, t([1.0, 1.0, 1.0]))


def test_gae_discounted_by_hand() -> None:
    # γ = 0.9, λ = 0.5 (γλ = 0.45); r = [0.1, 0, 1.0]; V = [0.2, 0.4, 0.6]
    # δ2 = 1.0 + 0         - 0.6 = 0.40   A2 = 0.40
    # δ1 = 0   + 0.9 * 0.6 - 0.4 = 0.14   A1 = 0.14 + 0.45 * 0.40  = 0.32
    # δ0 = 0.1 + 0.9 * 0.4 - 0.2 = 0.26   A0 = 0.26 + 0.45 * 0.32  = 0.404
    # returns = A + V = [0.604, 0.72, 1.0]
    adv, ret = gae(t([0.1, 0.0, 1.0]), t([0.2, 0.4, 0.6]), t([1, 1, 1]), gamma=0.9, lam=0.5)
    assert torch.allclose(adv, t([0.404, 0.32, 0.40]))
    assert torch.allclose(ret, t([0.604, 0.72, 1.0]))


def test_gae_ignores_padding_and_bootstraps_zero_after_the_end() -> None:
    # Row 2 ends after two tokens; its padded reward (99) and value (7) must not leak in.
    # γ = λ = 1: δ1 = 2 + 0 - 0.5 = 1.5 -> A1 = 1.5;  δ0 = 0 + 0.5 - 1 = -0.5 -> A0 = 1.0
    adv, ret = gae(
        t([0, 0, 1.0], [0, 2.0, 99.0]),
        t([0.5, 0.5, 0.5], [1.0, 0.5, 7.0]),
        t([1, 1, 1], [1, 1, 0]),
        gamma=1.0,
        lam=1.0,
    )
    assert torch.allclose(adv[1], t([1.0, 1.5, 0.0])[0])
    assert torch.allclose(ret[1], t([2.0, 2.0, 0.0])[0])
    assert torch.allclose(adv[0], t([0.5, 0.5, 0.5])[0])


def test_kl_shaped_rewards_put_the_score_on_the_last_real_token() -> None:
    # β = 0.1; log π - log π_ref = [0.5, -1.0, 0.0] -> penalties [-0.05, +0.1, 0]; score 1.0 on t=2.
    # Row 2 has two real tokens; its score 2.0 lands on t=1, its padding gets nothing.
    rewards, kl = kl_shaped_rewards(
        scores=torch.tensor([1.0, 2.0], dtype=torch.float64),
        logprobs=t([-1.0, -2.0, -0.5], [-1.0, -2.0, -3.0]),
        ref_logprobs=t([-1.5, -1.0, -0.5], [-1.0, -1.0, -9.0]),
        mask=t([1, 1, 1], [1, 1, 0]),
        kl_coef=0.1,
    )
    assert torch.allclose(kl, t([0.5, -1.0, 0.0], [0.0, -1.0, 0.0]))
    assert torch.allclose(rewards, t([-0.05, 0.1, 1.0], [0.0, 0.1 + 2.0, 0.0]))


def test_clipped_policy_loss_by_hand() -> None:
    # ε = 0.2. Tokens: ratio ρ = π/π_old and advantage A:
    #   t0: ρ=1.5, A=+1 -> unclipped -1.5, clipped -1.2 -> max -1.2   (clipped)
    #   t1: ρ=0.5, A=+1 -> unclipped -0.5, clipped -0.8 -> max -0.5
    #   t2: ρ=1.0, A=-1 -> both 1.0                     -> 1.0
    #   t3: ρ=0.5, A=-1 -> unclipped  0.5, clipped  0.8 -> max  0.8   (clipped)
    #   t4: padding with a huge advantage: ignored
    # loss = (-1.2 - 0.5 + 1.0 + 0.8) / 4 = 0.025; clip fraction 2/4
    # approx KL = 0.5 * mean(log(1.5)², log(0.5)², 0, log(0.5)²)
    old = torch.zeros(1, 5, dtype=torch.float64)
    new = torch.log(t([1.5, 0.5, 1.0, 0.5, 3.0]))
    out = clipped_policy_loss(
        new, old, t([1.0, 1.0, -1.0, -1.0, 1000.0]), t([1, 1, 1, 1, 0]), clip_range=0.2
    )
    assert out.loss.item() == pytest.approx(0.025)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    expected_kl = 0.5 * (math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 4
    assert out.approx_kl.item() == pytest.approx(expected_kl)


def test_clipped_policy_loss_gradient_vanishes_where_clipped() -> None:
    # At ρ = 1.5 with A > 0 the clipped term is constant: no gradient may flow through it.
    new = torch.log(t([1.5, 1.1])).requires_grad_(True)
    out = clipped_policy_loss(
        new, torch.zeros(1, 2, dtype=torch.float64), t([1.0, 1.0]), t([1, 1]), clip_range=0.2
    )
    out.loss.backward()
    assert new.grad is not None
    assert new.grad[0, 0].item() == 0.0
    # inside the trust region: d/dlogπ of -A·ρ/2 = -ρ/2 = -0.55
    assert new.grad[0, 1].item() == pytest.approx(-0.55)


def test_clipped_value_loss_by_hand() -> None:
    # ε = 0.2; V_old = 0.5.
    #   t0: V=1.0 -> clipped 0.7; R=2.0: (1-2)² = 1, (0.7-2)² = 1.69 -> 1.69 (clipped)
    #   t1: V=0.0 -> clipped 0.3; R=0.4: (0-0.4)² = 0.16, (0.3-0.4)² = 0.01 -> 0.16
    # loss = 0.5 * (1.69 + 0.16) / 2 = 0.4625; clip fraction 1/2
    out = clipped_value_loss(t([1.0, 0.0]), t([0.5, 0.5]), t([2.0, 0.4]), t([1, 1]), clip_range=0.2)
    assert out.loss.item() == pytest.approx(0.4625)
    assert out.clip_fraction.item() == pytest.approx(0.5)


def test_whitening_by_hand() -> None:
    # [2, 4, 6]: mean 4, unbiased variance (4 + 0 + 4) / 2 = 4, std 2 -> [-1, 0, 1];
    # without shifting the mean -> [3, 4, 5]; padding stays 0.
    values, mask = t([2.0, 4.0, 6.0, 100.0]), t([1, 1, 1, 0])
    assert torch.allclose(masked_whiten(values, mask), t([-1.0, 0.0, 1.0, 0.0]), atol=1e-6)
    assert torch.allclose(
        masked_whiten(values, mask, shift_mean=False), t([3.0, 4.0, 5.0, 0.0]), atol=1e-6
    )


def test_token_logprobs_and_entropy_by_hand() -> None:
    # logits [0, ln 3] -> p = [1/4, 3/4]; uniform logits over 4 -> entropy ln 4.
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    lp = token_logprobs(logits, torch.tensor([[1, 0]]))
    assert lp[0, 0].item() == pytest.approx(math.log(0.75))
    assert lp[0, 1].item() == pytest.approx(math.log(0.5))
    assert token_entropy(torch.zeros(1, 1, 4))[0, 0].item() == pytest.approx(math.log(4.0))
