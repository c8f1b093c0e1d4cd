"""GRPO: group-relative policy optimisation with reward functions named in the recipe.

Shao et al. 2024, "DeepSeekMath" (arXiv:2402.03300), through TRL's ``GRPOTrainer``. For each
prompt the policy samples a group of ``num_generations`` completions; each completion's reward
(the weighted sum of the recipe's reward functions, see :mod:`adapterhub.training.rewards`) minus
its group's mean is its advantage, so no value model is needed.

Design choices:

* **Batch sizes in prompts.** ``training.batch_size`` counts prompts per step, as everywhere else;
  TRL counts completions, so its per-device batch is ``batch_size * num_generations``.
* **The KL reference is the parent** (or the bare base without one): given a ``PeftModel`` with an
  adapter and ``beta > 0``, TRL adds a frozen copy of it named ``ref``, exactly as for DPO.
* **A reward model shares the base**: a ``type: reward_model`` reward is loaded into the same
  ``PeftModel`` as one more frozen LoRA (``reward``, ``reward1``...) and switched in for scoring.
* **Prompts are conversational** by the time TRL sees them, so TRL renders them with the base's
  chat template (a string prompt is one user turn); other plain columns (``answer``) are passed
  to the reward functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from adapterhub.training.methods.interface import Method, MethodContext, PrepareContext
from adapterhub.training.recipe import RecipeBase, RecipeSection
from adapterhub.training.rewards import RewardFunctionConfig, build_reward_functions
from adapterhub.training.templates import as_messages, check_content

if TYPE_CHECKING:
    import datasets

    from adapterhub.training.datasets import PreparedData


class SampledRewardsConfig(RecipeSection):
    """What GRPO and RLOO share: a group of sampled completions per prompt, scored by rewards."""

    rewards: list[RewardFunctionConfig] = Field(min_length=1, max_length=16)
    """Reward functions, summed with their weights: ``regex``, ``exact_answer``, ``length``,
    ``python`` (a dotted path) or ``reward_model`` (a registered reward version)."""
    num_generations: int = Field(default=4, ge=2, le=64)
    """Group size: completions sampled per prompt."""
    max_completion_length: int = Field(default=64, ge=1, le=8192)
    """Longest completion sampled, in tokens."""
    temperature: float = Field(default=1.0, gt=0, le=5)
    """Sampling temperature (the group needs variety to have anything to prefer)."""
    beta: float = Field(default=0.04, ge=0, le=10)
    """KL penalty to the reference (the parent, or the base without one); 0 turns it off."""
    epsilon: float = Field(default=0.2, gt=0, lt=1)
    """Clip range of the importance ratio."""
    num_iterations: int = Field(default=1, ge=1, le=16)
    """Optimisation passes over each generated batch (μ in the paper)."""


class GRPOConfig(SampledRewardsConfig):
    """The ``grpo:`` section of a recipe."""

    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo"] = "dapo"
    """The loss, as TRL names it: grpo (token losses averaged per sequence, the paper), dr_grpo
    (by a constant: Dr. GRPO), dapo (per active token of the batch, TRL's default), bnpo (per
    active token of the local batch), cispo (clipped importance weights: MiniMax-M1), sapo (a
    soft gate instead of clipping), luspo (GSPO scaled by length; needs sequence-level ratios)."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """Importance ratios per token, or one per completion (the mean log-ratio): ``sequence`` with
    the clipped loss is GSPO."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the group's reward std (the paper), the batch's, or not at all (Dr. GRPO)."""

    @model_validator(mode="after")
    def _luspo_is_sequence_level(self) -> GRPOConfig:
        if self.loss_type == "luspo" and self.importance_sampling_level != "sequence":
            raise ValueError("loss_type 'luspo' scales GSPO's sequence-level loss: set "
                             "importance_sampling_level: sequence (or choose another loss_type)")
        return self


class GRPORecipe(RecipeBase):
    """A recipe with ``method: grpo``."""

    method: Literal["grpo"]  # type: ignore[assignment]
    """Group-relative policy optimisation."""
    grpo: GRPOConfig
    """GRPO settings (``rewards`` is required)."""


def conversational_prompts(part: datasets.Dataset, tokenizer: Any, label: str) -> datasets.Dataset:
    """Prompts as chat messages (a string is one user turn), checked for pre-rendered tokens."""
    import datasets

    rows = []
    for index, row in enumerate(part):
        messages = as_messages(row["prompt"], "user")
        check_content(tokenizer, messages, where=f"{label} prompt {index + 1}")
        rows.append({**row, "prompt": messages})
    return datasets.Dataset.from_list(rows)


def sampling_section(recipe: RecipeBase) -> SampledRewardsConfig:
    """The recipe's ``grpo:`` or ``rloo:`` section."""
    section = getattr(recipe, recipe.method)
    assert isinstance(section, SampledRewardsConfig)
    return section


def prepare(ctx: PrepareContext) -> PreparedData:
    """Make prompts conversational (other columns kept); check that python rewards import.

    Raises:
        ConfigError: a prompt holds special tokens, or a python reward cannot be imported.
    """
    build_reward_functions([r for r in sampling_section(ctx.recipe).rewards if r.type != "reward_model"])
    return ctx.data.map_splits(
        lambda part, label: conversational_prompts(part, ctx.tokenizer, label)
    )


def reward_functions(ctx: MethodContext) -> tuple[list[Any], list[float]]:
    """The recipe's reward functions and weights; a ``reward_model`` one is loaded into the run's
    ``PeftModel`` as one more frozen LoRA (``reward``, ``reward1``...)."""
    from adapterhub.training.reward_model import load_reward_scorer

    loaded: list[str] = []

    def load_reward_model(ref: str) -> Any:
        name = "reward" if not loaded else f"reward{len(loaded)}"
        loaded.append(name)
        return load_reward_scorer(
            ctx.registry,
            ref,
            ctx.model,
            ctx.tokenizer,
            base_fingerprint=ctx.base.info.fingerprint,
            template_hash=ctx.base.info.template_hash,
            adapter_name=name,
            max_length=ctx.recipe.training.max_length,
        )

    return build_reward_functions(sampling_section(ctx.recipe).rewards, load_reward_model=load_reward_model)


def sampling_arguments(ctx: MethodContext, weights: list[float]) -> dict[str, Any]:
    """The config keywords GRPO and RLOO share: batches counted in completions (TRL's unit;
    ``training.batch_size`` counts prompts), the group, the KL and the clip."""
    s = sampling_section(ctx.recipe)
    completions_per_step = ctx.recipe.training.batch_size * s.num_generations
    return {
        **ctx.args,
        "per_device_train_batch_size": completions_per_step,
        "per_device_eval_batch_size": completions_per_step,
        "num_generations": s.num_generations,
        "max_completion_length": s.max_completion_length,
        "temperature": s.temperature,
        "beta": s.beta,
        "epsilon": s.epsilon,
        "num_iterations": s.num_iterations,
        "reward_weights": weights,
        "remove_unused_columns": False,
        "log_completions": False,
    }


def build_trainer(ctx: MethodContext) -> Any:
    """TRL's GRPOTrainer with the recipe's reward functions (the only place TRL's GRPO objects are built)."""
    import trl

    recipe = ctx.recipe
    assert isinstance(recipe, GRPORecipe) and ctx.prepared is not None
    g = recipe.grpo
    functions, weights = reward_functions(ctx)
    config = trl.GRPOConfig(
        **sampling_arguments(ctx, weights),
        loss_type=g.loss_type,
        importance_sampling_level=g.importance_sampling_level,
        scale_rewards=g.scale_rewards,
    )
    return trl.GRPOTrainer(reward_funcs=functions, args=config, **ctx.trainer_inputs())


METHOD = Method(
    name="grpo",
    recipe=GRPORecipe,
    formats=("prompt_only",),
    build_trainer=build_trainer,
    prepare=prepare,
    description="group-relative policy optimisation with recipe reward functions (no value model)",
)
