"""PPO's math as pure functions over tensors: KL-shaped rewards, GAE, clipped losses, whitening.

Nothing here knows about models, adapters or tokenizers, so every piece is checked against values
worked out by hand (``tests/training/test_ppo.py``). Shapes: ``B`` rollouts, ``T`` response tokens;
``mask`` is ``[B, T]`` with 1 on real response tokens (up to and including the end-of-turn token)
and 0 on padding after it.

Conventions follow "The N+ implementation details of RLHF with PPO" (Huang et al. 2024), which
reproduces OpenAI's ``lm-human-preferences`` (Ziegler et al. 2019):

* the KL penalty is per token, ``-kl_coef * (log π(y_t) - log π_ref(y_t))`` (the ``k1`` estimator),
  and the reward model's score is added on the last real token only;
* padding positions carry zero reward and zero value, so GAE bootstraps from 0 after the end;
* advantages are whitened over real tokens (mean 0, std 1); rewards may be whitened too, but
  without shifting their mean (a shifted mean would turn a length bias into a signal);
* the policy loss is the clipped surrogate of Schulman et al. 2017 and the value loss is clipped
  around the rollout's values, with ``0.5 * max(unclipped², clipped²)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over positions where ``mask`` is 1 (0 when the mask is empty)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, *, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``values`` over masked positions (Bessel-corrected when ``unbiased``)."""
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = mask.sum()
        if count > 1:
            var = var * count / (count - 1)
    return var


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Scale masked ``values`` to unit variance (and zero mean when ``shift_mean``); padding stays 0.

    Returns ``values`` unchanged when fewer than two positions are real: one number has no spread.
    """
    if mask.sum() < 2:
        return values * mask
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each chosen token: ``logits`` [B, T, V], ``tokens`` [B, T] -> [B, T]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution: ``logits`` [B, T, V] -> [B, T] (nats)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token per row ([B]); 0 for an empty row."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return (positions * mask.long()).max(dim=1).values


def kl_shaped_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: the KL penalty on every token plus the score on the last one.

    Ziegler et al. 2019, eq. 2: ``R(x, y) = r(x, y) - β log(π(y|x) / ρ(y|x))``, spread over tokens.

    Args:
        scores: reward-model score per rollout, [B].
        logprobs: log π of each response token under the rollout policy, [B, T].
        ref_logprobs: the same under the reference policy, [B, T].
        mask: 1 on real response tokens, [B, T].
        kl_coef: β.

    Returns:
        (rewards [B, T], per-token KL estimate ``logprobs - ref_logprobs`` [B, T]), both 0 on padding.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2015), over padded rows.

    ``δ_t = r_t + γ V_{t+1} - V_t`` and ``A_t = δ_t + γ λ A_{t+1}``, with ``V`` and ``r`` zero on
    padding so that the value after the last real token is 0.

    Args:
        rewards: per-token rewards, [B, T].
        values: value estimates from the rollout, [B, T].
        mask: 1 on real tokens, [B, T].
        gamma: discount.
        lam: GAE's λ (1 gives Monte-Carlo returns minus values, 0 gives one-step TD).

    Returns:
        (advantages [B, T], returns = advantages + values [B, T]), both 0 on padding.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    length = values.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


@dataclass(frozen=True)
class PolicyLoss:
    """The clipped surrogate and what a practitioner reads beside it."""

    loss: torch.Tensor  # scalar, to minimise
    clip_fraction: torch.Tensor  # share of real tokens where the clipped term was chosen
    approx_kl: torch.Tensor  # 0.5 * E[(log r)^2], old -> new policy (N+ details, #21)


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float,
) -> PolicyLoss:
    """PPO's clipped surrogate objective, negated (Schulman et al. 2017, eq. 7).

    ``L = E[max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε))]`` with ``ρ = π/π_old`` per token.
    """
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), mask)
    approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return PolicyLoss(loss=loss, clip_fraction=clip_fraction.detach(), approx_kl=approx_kl.detach())


@dataclass(frozen=True)
class ValueLoss:
    """The clipped value loss and the share of tokens where clipping bit."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_range: float,
) -> ValueLoss:
    """``0.5 * E[max((V - R)², (clip(V, V_old ± ε) - R)²)]`` over real tokens."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    clip_fraction = masked_mean((clipped_error > unclipped_error).to(values.dtype), mask)
    return ValueLoss(loss=loss, clip_fraction=clip_fraction.detach())
