"""Training methods and the seam they plug into.

The runner (:mod:`adapterhub.training.run`) does everything that does not depend on the method:
it validates the recipe, loads and checks the data, loads the frozen base (NF4 by default),
attaches a fresh LoRA or the parent version's weights, wires progress/cancel/step-log callbacks,
checkpoints and resumes, evaluates, runs the forgetting check and registers the version. A method
only turns a ready model plus data into a ``transformers.Trainer``.

How a method plugs in
=====================

1. Write ``adapterhub/training/methods/<name>.py`` (``name`` is one of
   the keys of :data:`_MODULES` below). It defines:

   * a section model ``<Name>Config(RecipeSection)`` (pydantic, ``extra="forbid"``, a docstring under each
     field, ``Field`` limits) with the method's own knobs, e.g. DPO's ``beta``;
   * the recipe class ``<Name>Recipe(RecipeBase)`` with ``method: Literal["<name>"]`` and the
     section as a field named after the method (``dpo: DPOConfig = Field(default_factory=DPOConfig)``);
   * ``METHOD = Method(name=..., recipe=..., formats=(...), build_trainer=...)``, optionally with
     ``prepare`` (tokenize/check data before the model is loaded; raise ConfigError there) and
     ``render_example`` (what ``--show-example`` prints; rows rendered with the loss mask).

2. Add one line to :data:`_MODULES` below: ``"<name>": "adapterhub.training.methods.<name>"``.

3. In ``build_trainer(ctx)``, build the TRL config and trainer **here and nowhere else**. Import TRL
   inside the function (importing a method module must stay cheap). Start from ``ctx.args``: the
   common ``transformers.TrainingArguments`` keywords the runner derived from ``recipe.training``
   (output_dir, steps, batch, lr, schedule, checkpointing, logging, seed, precision, ``use_cpu``…);
   add the method's own fields, e.g. ``trl.DPOConfig(**ctx.args, beta=ctx.recipe.dpo.beta,
   max_length=ctx.recipe.training.max_length)``. Build the trainer with
   ``**ctx.trainer_inputs()``: the model (a ``PeftModel``: frozen base + trainable adapter named
   ``"default"``; do **not** pass ``peft_config``), the datasets (``ctx.prepared`` if you defined
   ``prepare``, else ``ctx.data``), the tokenizer and the callbacks. Return the trainer without
   calling ``train()``.

   * The reference policy costs nothing: with ``ref_model=None`` TRL's preference trainers use the
     base with the adapter switched off. When ``ctx.parent_dir`` is set (the run continues from a
     parent), the parent's exported PEFT folder is there if the method wants the parent frozen as
     reference (``ctx.model.load_adapter(ctx.parent_dir, "reference", is_trainable=False)``).
   * Method metrics: log them through the trainer's normal ``log()``; the progress adapter forwards
     every numeric log value that is not a standard field as ``ProgressEvent.metrics`` under the
     same name (``rewards/margins``, ``reward``, ``kl``…), and the last values go into the version's
     metrics as ``train/<name>``.
   * Other model heads (the reward model's score head): set ``Method.task_type="SEQ_CLS"``; the
     runner then loads ``AutoModelForSequenceClassification`` (``num_labels=1``) over the same base
     and keeps the head trainable (``modules_to_save=["score"]``), saved with the adapter.
   * A loop TRL no longer has (PPO): subclass ``transformers.Trainer`` and override
     ``compute_loss``/``training_step``, so checkpoints, resume, callbacks and cancel work unchanged.

4. Add a bundled recipe under ``recipes/`` and tests under ``tests/training/``.

Nothing else changes: CLI (``adapterhub train``), ``Hub.train``, progress, resume, cancel and
registration all come from the runner.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from adapterhub.errors import ConfigError, TrainingError

if TYPE_CHECKING:
    from adapterhub.core.progress import ProgressCallback
    from adapterhub.models.base import LoadedBase
    from adapterhub.registry import Registry, Version
    from adapterhub.training.datasets import DatasetFormat, TrainingData
    from adapterhub.training.recipe import RecipeBase
    from adapterhub.training.templates import RenderedExample

# Method name -> module defining METHOD. Modules are imported on first use (TRL is heavy).
_MODULES: dict[str, str] = {
    "sft": "adapterhub.training.methods.sft",
    "dpo": "adapterhub.training.methods.dpo",
    "orpo": "adapterhub.training.methods.orpo",
    "simpo": "adapterhub.training.methods.simpo",
    "reward": "adapterhub.training.methods.reward",
    "grpo": "adapterhub.training.methods.grpo",
    "ppo": "adapterhub.training.methods.ppo",
}


@dataclass(frozen=True)
class PrepareContext:
    """What a method sees before the model is loaded: enough to tokenize and check the data."""

    recipe: RecipeBase
    tokenizer: Any  # transformers PreTrainedTokenizerBase with the base's chat template
    data: TrainingData
    eot_token_ids: tuple[int, ...]  # ids that end an assistant turn (eos and generation config)


@dataclass(frozen=True)
class MethodContext:
    """Everything ``build_trainer`` needs. Built by the runner; read-only for methods."""

    recipe: RecipeBase
    model: Any  # peft.PeftModel: frozen base + trainable adapter "default"
    tokenizer: Any
    base: LoadedBase  # the frozen base as loaded for this run (its info, precision, eos ids)
    data: TrainingData
    prepared: Any  # what Method.prepare returned (None when the method has no prepare)
    args: Mapping[str, Any]  # common transformers.TrainingArguments keywords
    callbacks: tuple[Any, ...]  # transformers TrainerCallbacks: progress, cancel, step log
    registry: Registry
    run_dir: Path
    say: ProgressCallback | Callable[[str], None]  # one-line status messages to the user
    parent: Version | None = None
    parent_dir: Path | None = None  # the parent's PEFT folder, exported and verified

    def trainer_inputs(self) -> dict[str, Any]:
        """The keywords every trainer takes alike: the model, the prepared train and eval sets,
        the tokenizer and the runner's callbacks (``Trainer(args=config, **ctx.trainer_inputs())``)."""
        data = self.prepared if self.prepared is not None else self.data
        return {
            "model": self.model,
            "train_dataset": data.train,
            "eval_dataset": data.eval,
            "processing_class": self.tokenizer,
            "callbacks": list(self.callbacks),
        }


@dataclass(frozen=True)
class Method:
    """One training method, as the runner sees it."""

    name: str
    recipe: type[RecipeBase]
    formats: tuple[DatasetFormat, ...]
    build_trainer: Callable[[MethodContext], Any]  # -> transformers.Trainer (not yet trained)
    prepare: Callable[[PrepareContext], Any] | None = None
    render_example: Callable[[PrepareContext, Mapping[str, Any]], RenderedExample] | None = None
    task_type: Literal["CAUSAL_LM", "SEQ_CLS"] = "CAUSAL_LM"
    description: str = field(default="")


def available_methods() -> list[str]:
    """Names of the methods that can run, in registration order."""
    return list(_MODULES)


def get_method(name: str) -> Method:
    """The :class:`Method` registered under ``name``.

    Raises:
        ConfigError: no such method; lists the available ones.
    """
    module_name = _MODULES.get(name)
    if module_name is None:
        raise ConfigError(f"method {name!r} is not available; use one of {', '.join(_MODULES)}")
    method = importlib.import_module(module_name).METHOD
    if not isinstance(method, Method) or method.name != name:
        raise TrainingError(f"{module_name}.METHOD must be a Method named {name!r}; fix the method module")
    return method
