"""Training methods: the one list of them (:data:`METHODS`), and how a method plugs in.

The runner (:mod:`adapterhub.training.run`) does everything that does not depend on the method:
it validates the recipe, loads and checks the data, loads the frozen base (NF4 by default),
attaches a fresh LoRA or the parent version's weights, wires progress/cancel/step-log callbacks,
checkpoints and resumes, evaluates, runs the forgetting check and registers the version. A method
only turns a ready model plus data into a ``transformers.Trainer``.

How a method plugs in
=====================

1. Write ``adapterhub/training/methods/<name>.py``. It imports the seam from
   :mod:`adapterhub.training.methods.interface` (never from this package, which imports every
   method module) and defines:

   * a section model ``<Name>Config(RecipeSection)`` (pydantic, ``extra="forbid"``, a docstring under each
     field, ``Field`` limits) with the method's own knobs, e.g. DPO's ``beta``;
   * the recipe class ``<Name>Recipe(RecipeBase)`` with ``method: Literal["<name>"]`` and the
     section as a field named after the method (``dpo: DPOConfig = Field(default_factory=DPOConfig)``);
   * ``METHOD = Method(name=..., recipe=..., formats=(...), build_trainer=...)``, optionally with
     ``prepare`` (tokenize/check data before the model is loaded; raise ConfigError there) and
     ``render_example`` (what ``--show-example`` prints; rows rendered with the loss mask).

2. Import the module below and add its ``METHOD`` to :data:`METHODS`.

3. In ``build_trainer(ctx)``, build the TRL config and trainer **here and nowhere else**. Import TRL
   inside the function (this package imports every method module, so each must stay cheap). Start
   from ``ctx.args``: the common ``transformers.TrainingArguments`` keywords the runner derived
   from ``recipe.training`` (output_dir, steps, batch, lr, schedule, checkpointing, logging, seed,
   precision, ``use_cpu``…); add the method's own fields, e.g. ``trl.DPOConfig(**ctx.args,
   beta=ctx.recipe.dpo.beta, max_length=ctx.recipe.training.max_length)``. Build the trainer with
   ``**ctx.trainer_inputs()``: the model (a ``PeftModel``: frozen base + trainable adapter named
   ``"default"``; do **not** pass ``peft_config``), the datasets (``ctx.prepared`` if you defined
   ``prepare``, else ``ctx.data``), the tokenizer and the callbacks. Return the trainer without
   calling ``train()``.

   * The reference policy costs nothing: given the ``PeftModel`` and ``ref_model=None``, TRL's DPO
     and GRPO trainers add a frozen copy of the starting adapter (``ref``), which is the parent when
     there is one and the bare base when the adapter starts at zero. When ``ctx.parent_dir`` is set
     (the run continues from a parent), the parent's exported PEFT folder is there for a method
     that loads the reference itself (``ctx.model.load_adapter(ctx.parent_dir, "reference",
     is_trainable=False)``, as PPO does).
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

from collections.abc import Mapping
from types import MappingProxyType

from adapterhub.errors import ConfigError
from adapterhub.training.methods import dpo, grpo, kto, orpo, ppo, reward, rloo, sft, simpo
from adapterhub.training.methods.interface import Method, MethodContext, PrepareContext

__all__ = ["METHODS", "Method", "MethodContext", "PrepareContext", "get_method"]

METHODS: Mapping[str, Method] = MappingProxyType(
    {module.METHOD.name: module.METHOD for module in (sft, dpo, orpo, simpo, kto, reward, grpo, rloo, ppo)}
)
"""Every training method by name, SFT first (messages list them in this order); built on import."""


def get_method(name: str) -> Method:
    """The method called ``name``.

    Raises:
        ConfigError: no such method; lists the methods there are.
    """
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"method {name!r} is not available; use one of {', '.join(METHODS)}"
        ) from None
