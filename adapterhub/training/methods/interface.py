"""The seam between the runner and a method: what a method is, and what the runner hands it.

:class:`Method` is what ``methods/<name>.py`` exports as ``METHOD``; :class:`PrepareContext` and
:class:`MethodContext` are what its ``prepare`` and ``build_trainer`` receive. How to write a
method is in :mod:`adapterhub.training.methods`, whose ``__init__`` is the list of methods and so
imports every method module: method modules import the seam from here, never from the package,
and modules outside it that a method uses (``preference.py``) name these types only under
``TYPE_CHECKING``, since importing this module first runs that ``__init__``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from adapterhub.core.progress import ProgressCallback
    from adapterhub.models.base import LoadedBase
    from adapterhub.registry import Registry, Version
    from adapterhub.training.datasets import DatasetFormat, PreparedData, TrainingData
    from adapterhub.training.recipe import RecipeBase
    from adapterhub.training.templates import RenderedExample


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
    prepared: PreparedData | None  # what Method.prepare returned (None when the method has none)
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
    prepare: Callable[[PrepareContext], PreparedData] | None = None
    render_example: Callable[[PrepareContext, Mapping[str, Any]], RenderedExample] | None = None
    task_type: Literal["CAUSAL_LM", "SEQ_CLS"] = "CAUSAL_LM"
    single_process: str | None = None
    """Why the method trains on one process only (``training.processes`` above 1 is refused with it)."""
    description: str = field(default="")
