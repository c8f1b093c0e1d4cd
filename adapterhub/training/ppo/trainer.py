"""Our own PPO for RLHF, every model an adapter on the one frozen base.

TRL deleted its PPO trainer, so this is a compact re-implementation of the classic recipe
(Ziegler et al. 2019; Ouyang et al. 2022) following the checklist of Huang et al. 2024. The math
lives in :mod:`adapterhub.training.ppo.losses`; this module owns the models and the loop.

**Four roles, one base.** One ``PeftModel`` over the frozen (NF4) base holds named LoRA adapters:

====================  ===========================================  ==========
role                  adapter                                      trained
====================  ===========================================  ==========
policy                ``default`` (starts as the SFT parent)        yes
reference             ``reference`` (frozen copy of the parent),   no
                      or adapters off (the bare base) without one
value                 ``value`` (starts as the reward model's LoRA) yes, with its own
                      + a linear head on the last hidden state      head
reward                ``reward`` + the reward version's score head  no
====================  ===========================================  ==========

Switching the active adapter is free, so PPO costs about one model's memory instead of four.

**One Trainer step = one PPO iteration.** ``transformers.Trainer`` drives the loop (checkpoints,
resume, callbacks, cancel and the learning-rate schedule come for free): each step takes a batch
of prompts, samples a rollout, scores it and computes advantages, then runs ``ppo_epochs`` passes
over ``num_minibatches`` minibatches. All but the last optimizer step happen inside
:meth:`PPOTrainer.training_step`; the Trainer's own step performs the last, so the optimizer steps
``ppo_epochs * num_minibatches`` times per rollout and the schedule advances once per rollout.

Implementation details kept from Huang et al. 2024: dropout off in every role (the ratio
π/π_old must be exactly 1 before the first update); logits divided by the sampling temperature
before taking log-probs; responses cut after the first end-of-turn token, which stays in the mask;
a fixed penalty on the score of a response that never ends its turn ("missing EOS penalty");
per-token KL penalty with the score on the last token; the value model initialised from the
reward model; advantages whitened per batch; rewards optionally whitened without shifting their
mean.

References:
    Schulman, Wolski, Dhariwal, Radford, Klimov (2017). Proximal Policy Optimization Algorithms.
    arXiv:1707.06347.
    Schulman, Moritz, Levine, Jordan, Abbeel (2015). High-Dimensional Continuous Control Using
    Generalized Advantage Estimation. arXiv:1506.02438.
    Ziegler, Stiennon, Wu, Brown, Radford, Amodei, Christiano, Irving (2019). Fine-Tuning Language
    Models from Human Preferences. arXiv:1909.08593.
    Ouyang et al. (2022). Training language models to follow instructions with human feedback.
    arXiv:2203.02155.
    Huang, Noukhovitch, Hosseini, Rasul, Wang, Tunstall (2024). The N+ Implementation Details of
    RLHF with PPO: A Case Study on TL;DR Summarization. arXiv:2403.17031.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer

from adapterhub.models.adapters import WEIGHTS_FILE
from adapterhub.training.ppo.losses import (
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    kl_shaped_rewards,
    masked_mean,
    masked_whiten,
    token_entropy,
    token_logprobs,
)
from adapterhub.training.reward_model import (
    RewardScorer,
    active_adapter,
    backbone_of,
    load_lora_weights,
)

POLICY = "default"
VALUE = "value"
VALUE_HEAD_FILE = "ppo_value_head.safetensors"


@dataclass(frozen=True)
class PPOSettings:
    """PPO's knobs as the loop uses them (built from the recipe's ``ppo:`` section)."""

    kl_coef: float = 0.05
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    ppo_epochs: int = 2
    num_minibatches: int = 1
    whiten_rewards: bool = False
    max_new_tokens: int = 48
    temperature: float = 0.7
    missing_eos_penalty: float | None = 1.0


@dataclass(frozen=True)
class Rollout:
    """One batch of sampled responses with everything PPO needs; ``P`` prompt width, ``T`` response."""

    input_ids: torch.Tensor  # [B, P + T] left-padded prompt, then response (padding after end)
    attention_mask: torch.Tensor  # [B, P + T]
    prompt_width: int  # P
    mask: torch.Tensor  # [B, T] 1 on response tokens up to and including the end-of-turn
    logprobs: torch.Tensor  # [B, T] under the policy that sampled them
    ref_logprobs: torch.Tensor  # [B, T]
    values: torch.Tensor  # [B, T]
    scores: torch.Tensor  # [B] reward model, after the missing-EOS penalty
    advantages: torch.Tensor  # [B, T] whitened
    returns: torch.Tensor  # [B, T]
    stats: Mapping[str, float]


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, so a padded row sees the positions it had alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_mask(response: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """1 on tokens up to and including the first end-of-turn token of each row ([B, T])."""
    is_eos = torch.isin(response, torch.tensor(list(eos_ids), device=response.device))
    before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # eos tokens strictly before t
    return (before == 0).long()


def disable_dropout(model: torch.nn.Module) -> None:
    """Zero every dropout probability (LoRA's included): PPO's ratio must start at exactly 1."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class PPOTrainer(Trainer):  # type: ignore[misc]
    """``transformers.Trainer`` running PPO; see the module docstring for the roles and the loop.

    Args:
        model: PeftModel with the trainable ``default`` (policy) and ``value`` adapters, the
            frozen ``reward`` adapter, and optionally a frozen reference adapter.
        value_head: ``Linear(hidden, 1)`` reading the value adapter's last hidden state; it is
            registered on ``model`` so the optimizer, clipping and checkpoints include it.
        scorer: the reward model (loaded into ``model``).
        reference_adapter: the frozen reference adapter's name, or None for the bare base.
        settings: PPO's knobs.
        eos_token_ids: tokens that end a response.
        kwargs: passed to ``transformers.Trainer`` (``args``, ``train_dataset`` with a
            ``prompt_ids`` column, ``eval_dataset``, ``processing_class``, ``callbacks``).
    """

    def __init__(
        self,
        *,
        model: Any,
        value_head: torch.nn.Linear,
        scorer: RewardScorer,
        reference_adapter: str | None,
        settings: PPOSettings,
        eos_token_ids: Sequence[int],
        **kwargs: Any,
    ) -> None:
        model.add_module("ppo_value_head", value_head)
        disable_dropout(model)
        self.value_head = value_head
        self.scorer = scorer
        self.reference_adapter = reference_adapter
        self.settings = settings
        self.eos_token_ids = tuple(eos_token_ids)
        self.trainable = [p for n, p in model.named_parameters() if _is_trainable_name(n)]
        for param in self.trainable:
            param.requires_grad_(True)
        self._metrics: dict[str, list[float]] = defaultdict(list)
        kwargs.setdefault("data_collator", _collate_prompts)
        super().__init__(model=model, **kwargs)

    # ------------------------------------------------------------------ adapters

    def _use(self, name: str) -> None:
        """Make ``name`` the active adapter for a training pass, keeping both roles trainable."""
        self.model.set_adapter(name)
        for param in self.trainable:
            param.requires_grad_(True)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_for(attention_mask),
            use_cache=False,
        )

    def _response_logits(
        self, rollout_ids: torch.Tensor, attention: torch.Tensor, width: int
    ) -> torch.Tensor:
        logits = self._forward(rollout_ids, attention).logits[:, width - 1 : -1]  # [B, T, V]
        return logits.float() / self.settings.temperature

    def _values(
        self, rollout_ids: torch.Tensor, attention: torch.Tensor, width: int
    ) -> torch.Tensor:
        hidden = backbone_of(self.model)(
            input_ids=rollout_ids,
            attention_mask=attention,
            position_ids=position_ids_for(attention),
            use_cache=False,
        ).last_hidden_state[:, width - 1 : -1]  # [B, T, H]
        return self.value_head(hidden.float()).squeeze(-1)  # [B, T]

    # ------------------------------------------------------------------ rollout

    @torch.no_grad()
    def rollout(self, prompts: Sequence[Sequence[int]], prompt_messages: Sequence[Any]) -> Rollout:
        """Sample responses to ``prompts`` with the policy, score them, compute advantages."""
        s = self.settings
        tokenizer = self.processing_class
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        )
        width = max(len(p) for p in prompts)
        query = torch.full((len(prompts), width), pad, dtype=torch.long)
        query_mask = torch.zeros_like(query)
        for i, ids in enumerate(prompts):  # left padding, so every response starts at column P
            query[i, width - len(ids) :] = torch.tensor(list(ids))
            query_mask[i, width - len(ids) :] = 1
        device = next(self.model.parameters()).device
        query, query_mask = query.to(device), query_mask.to(device)

        with active_adapter(self.model, POLICY):
            out = self.model.generate(
                input_ids=query,
                attention_mask=query_mask,
                max_new_tokens=s.max_new_tokens,
                do_sample=True,
                temperature=s.temperature,
                top_k=0,
                top_p=1.0,
                eos_token_id=list(self.eos_token_ids),
                pad_token_id=pad,
            )
        response = out[:, width:]
        mask = response_mask(response, self.eos_token_ids)
        # Before padding is rewritten: on bases whose pad token is the end-of-turn token, padding
        # would otherwise count as an ending.
        has_eos = torch.isin(response, torch.tensor(self.eos_token_ids, device=device)).any(dim=1)
        response = torch.where(mask.bool(), response, torch.full_like(response, pad))
        input_ids = torch.cat([query, response], dim=1)
        attention = torch.cat([query_mask, mask], dim=1)

        with active_adapter(self.model, POLICY):
            logprobs = token_logprobs(self._response_logits(input_ids, attention, width), response)
        with active_adapter(self.model, self.reference_adapter):
            ref_logprobs = token_logprobs(
                self._response_logits(input_ids, attention, width), response
            )
        with active_adapter(self.model, VALUE):
            values = self._values(input_ids, attention, width)

        texts = [
            tokenizer.decode(r[m.bool()], skip_special_tokens=True).strip()
            for r, m in zip(response, mask, strict=True)
        ]
        raw_scores = torch.tensor(
            self.scorer.score(list(prompt_messages), texts), dtype=torch.float32, device=device
        )
        scores = raw_scores.clone()
        if s.missing_eos_penalty is not None:
            scores = torch.where(has_eos, scores, scores - s.missing_eos_penalty)

        logprobs, ref_logprobs, values = logprobs * mask, ref_logprobs * mask, values * mask
        rewards, kl = kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, s.kl_coef)
        if s.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, values, mask, gamma=s.gamma, lam=s.lam)
        advantages = masked_whiten(advantages, mask)

        kl_per_response = kl.sum(dim=1)
        stats = {
            "reward": raw_scores.mean().item(),
            "reward_std": raw_scores.std().item() if len(raw_scores) > 1 else 0.0,
            "score": scores.mean().item(),
            "kl": kl_per_response.mean().item(),
            "non_score_reward": (-s.kl_coef * kl_per_response).mean().item(),
            "rlhf_reward": (scores - s.kl_coef * kl_per_response).mean().item(),
            "completion_length": mask.sum(dim=1).float().mean().item(),
            "eos_rate": has_eos.float().mean().item(),
        }
        return Rollout(
            input_ids=input_ids,
            attention_mask=attention,
            prompt_width=width,
            mask=mask,
            logprobs=logprobs,
            ref_logprobs=ref_logprobs,
            values=values,
            scores=scores,
            advantages=advantages,
            returns=returns,
            stats=stats,
        )

    # ------------------------------------------------------------------ update

    def minibatch_loss(
        self, rollout: Rollout, index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """PPO's loss on rows ``index`` of ``rollout``: clipped policy + ``vf_coef`` × clipped value."""
        s = self.settings
        ids, attention = rollout.input_ids[index], rollout.attention_mask[index]
        mask, width = rollout.mask[index], rollout.prompt_width
        response = ids[:, width:]

        self._use(POLICY)
        logits = self._response_logits(ids, attention, width)
        logprobs = token_logprobs(logits, response)
        policy = clipped_policy_loss(
            logprobs,
            rollout.logprobs[index],
            rollout.advantages[index],
            mask,
            clip_range=s.clip_range,
        )
        self._use(VALUE)
        values = self._values(ids, attention, width)
        value = clipped_value_loss(
            values,
            rollout.values[index],
            rollout.returns[index],
            mask,
            clip_range=s.clip_range_value,
        )
        self._use(POLICY)
        loss = policy.loss + s.vf_coef * value.loss
        with torch.no_grad():
            entropy = masked_mean(token_entropy(logits), mask)
        return loss, {
            "policy_loss": policy.loss.item(),
            "value_loss": value.loss.item(),
            "clip_fraction": policy.clip_fraction.item(),
            "value_clip_fraction": value.clip_fraction.item(),
            "approx_kl": policy.approx_kl.item(),
            "entropy": entropy.item(),
        }

    def training_step(
        self, model: Any, inputs: Mapping[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """One PPO iteration: rollout, then every minibatch update but the last optimizer step."""
        s = self.settings
        rollout = self.rollout(inputs["prompt_ids"], inputs["prompt"])
        self.state.num_input_tokens_seen += int(rollout.attention_mask.sum())
        model.train()
        rows = rollout.input_ids.shape[0]
        size = max(1, rows // s.num_minibatches)
        plan = [
            order[start : start + size]
            for _ in range(s.ppo_epochs)
            for order in [torch.randperm(rows)]
            for start in range(0, rows, size)
        ]
        totals: dict[str, float] = defaultdict(float)
        loss = torch.zeros(())
        for number, index in enumerate(plan):
            loss, stats = self.minibatch_loss(rollout, index)
            self.accelerator.backward(loss)
            for key, value in stats.items():
                totals[key] += value / len(plan)
            if number < len(plan) - 1:  # the Trainer performs the last step itself
                if self.args.max_grad_norm and self.args.max_grad_norm > 0:
                    self._clip_grad_norm(model)
                self.optimizer.step()
                self.optimizer.zero_grad()
        for key, value in {**rollout.stats, **totals}.items():
            self._metrics[key].append(value)
        return loss.detach()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged PPO metrics since the last log (reward, kl, clip_fraction, ...)."""
        if self._metrics and not any(k.startswith("eval_") for k in logs):
            logs = {**logs, **{k: sum(v) / len(v) for k, v in self._metrics.items()}}
            self._metrics.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ eval

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Sample once on the held-out prompts: mean reward, KL to the reference, length."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            return {}
        rows = list(dataset)
        batch = max(1, self.args.per_device_eval_batch_size)
        sums: dict[str, float] = defaultdict(float)
        for start in range(0, len(rows), batch):
            part = _collate_prompts(rows[start : start + batch])
            rollout = self.rollout(part["prompt_ids"], part["prompt"])
            for key in ("reward", "kl", "completion_length", "eos_rate"):
                sums[key] += rollout.stats[key] * len(part["prompt_ids"])
        metrics = {f"{metric_key_prefix}_{k}": v / len(rows) for k, v in sums.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(
            self.args, self.state, self.control, metrics
        )
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def _save(
        self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None
    ) -> None:
        """Save the policy (and, in subfolders, the other adapters) plus the value head."""
        from safetensors.torch import save_file

        super()._save(output_dir, state_dict)
        folder = Path(output_dir or self.args.output_dir)
        save_file(
            {"weight": self.value_head.weight.detach().contiguous()}, str(folder / VALUE_HEAD_FILE)
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Restore the policy and value adapters and the value head (the frozen roles never change)."""
        from safetensors.torch import load_file

        folder = Path(resume_from_checkpoint)
        target = model or self.model
        for name, path in ((POLICY, folder / WEIGHTS_FILE), (VALUE, folder / VALUE / WEIGHTS_FILE)):
            load_lora_weights(
                target, load_file(str(path)), name, where=f"checkpoint {str(folder)!r}"
            )
        with torch.no_grad():
            self.value_head.weight.copy_(load_file(str(folder / VALUE_HEAD_FILE))["weight"])
        self._use(POLICY)


def _is_trainable_name(name: str) -> bool:
    return (
        (f".{POLICY}." in name or f".{VALUE}." in name)
        and "lora_" in name
        or "ppo_value_head" in name
    )


def _collate_prompts(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Keep prompts as lists: the rollout pads them itself (left padding)."""
    return {
        "prompt_ids": [list(r["prompt_ids"]) for r in rows],
        "prompt": [r["prompt"] for r in rows],
    }
