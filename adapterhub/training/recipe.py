"""Training recipes: the YAML a user writes, as pydantic models (the schema, nothing else).

A recipe has a common part (adapter name, dataset, LoRA shape, trainer settings, optional parent)
that every method shares, :class:`RecipeBase`, and one section named after its method (``sft:``,
``dpo:`` …) for that method's own knobs. Each method subclasses :class:`RecipeBase` in
``methods/<name>.py`` with ``method: Literal["<name>"]`` and its section, so an ``sft`` recipe with
a ``dpo:`` section is an unknown field. Reading a file, overrides, choosing the method's class and
turning validation errors into one message are :mod:`adapterhub.training.loading`'s job.

Design choices:

* **``extra="forbid"`` everywhere**: a typo is an error, never a silently ignored setting.
* **Only checks that need the data alone** (one dataset source, plain layer names, valid names
  and refs) live here; checks against the file system or the list of methods are the loader's.
  So this module imports no other training module: it is the bottom of the training package.
* **No TRL or PEFT here.** These models are the public contract; methods translate them into
  TRL/PEFT objects in one place each (``methods/<name>.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adapterhub.core.refs import AdapterRef, validate_name
from adapterhub.errors import ConfigError

ALL_LINEAR = "all-linear"
REWRITING_INITS = ("pissa", "olora")
"""``lora.init`` values that start the adapter at a slice of the base's weights and train on the
rest (W_res = W - B0 A0); the registered adapter is converted back to a plain LoRA over W."""
REFERENCE_FREE = ("sft", "orpo", "simpo")
"""Methods whose loss never runs the base with the adapter switched off (with a rewritten base
that would be W_res, not the base: a wrong reference policy)."""


class RecipeSection(BaseModel):
    """Base of every recipe model: unknown fields are errors; field docstrings become descriptions."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


class DatasetConfig(RecipeSection):
    """Where the training examples come from and how to hold some out for evaluation."""

    path: str | None = None
    """A JSONL file, one example per line; relative paths are relative to the recipe file."""
    name: str | None = None
    """Instead of ``path``: a `datasets` name (a Hub id, or a local folder saved by `datasets`)."""
    config: str | None = None
    """The `datasets` configuration (subset) of ``name``."""
    split: str = "train"
    """The split of ``name`` to train on."""
    eval_path: str | None = None
    """A JSONL file of evaluation examples (same format as the training file)."""
    eval_split: str | None = None
    """A split of ``name`` to evaluate on (e.g. ``test``)."""
    eval_fraction: float = Field(default=0.1, ge=0.0, le=0.5)
    """Share of the training examples held out for evaluation when no eval file/split is given
    (0 turns evaluation off). Needs at least 10 examples; the split is seeded by ``seed``."""
    max_examples: int | None = Field(default=None, ge=1)
    """Use at most this many training examples (after the eval split), for quick runs."""

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if (self.path is None) == (self.name is None):
            raise ValueError(
                "give exactly one of dataset.path (a JSONL file) and dataset.name (a `datasets` name)"
            )
        if self.eval_split is not None and self.name is None:
            raise ValueError("dataset.eval_split needs dataset.name; for JSONL data use dataset.eval_path")
        return self


class LoraConfig(RecipeSection):
    """The shape of the LoRA adapter trained over the frozen base."""

    r: int = Field(default=16, ge=1, le=256)
    """Rank of the update B @ A."""
    alpha: float = Field(default=16.0, gt=0, le=4096)
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA input during training."""
    target_modules: list[str] | None = Field(default=None, min_length=1)
    """Names of the base's linear layers to adapt, or ``["all-linear"]`` for every one but the LM
    head (PEFT's meaning); by default the base family's attention projections: q_proj, k_proj,
    v_proj, o_proj (qkv_proj, o_proj on Phi-3)."""
    mlp: bool = False
    """Also adapt the MLP projections (gate_proj, up_proj, down_proj; gate_up_proj, down_proj on Phi-3)."""
    use_rslora: bool = False
    """Scale by alpha / sqrt(r) (rank-stabilised LoRA) instead of alpha / r."""
    use_dora: bool = False
    """Train DoRA (weight-decomposed LoRA: a learned magnitude per output column). PEFT trains it
    over an nf4, bf16 or fp32 base; over int8 it is refused (dequantising the int8 weight for the
    magnitude leaves bitsandbytes' int8 layer unable to run its next forward). The serving engine
    refuses DoRA (its batched kernel is plain LoRA), so serve it merged into a base or through
    ``Hub.generate``."""
    plus_lr_ratio: float | None = Field(default=None, ge=1, le=1024)
    """LoRA+: train B at this many times the learning rate of A (the paper suggests 16); PEFT's
    LoRA+ optimizer. Unset: one learning rate for both."""
    init: Literal["default", "gaussian", "pissa", "olora", "loftq"] = "default"
    """How A and B start. ``default``: A random (Kaiming), B zero, so training starts at the base;
    ``gaussian``: A drawn from N(0, 1/r), B zero. ``pissa`` (the top-r singular vectors of each
    weight) and ``olora`` (its QR factors) start at a slice of the base and train on the rest,
    W - B0 A0; the registered version is converted to a plain LoRA of rank 2r over the original
    base (PEFT's conversion), so it is served on the shared base like any other, by a server
    whose ``max_lora_rank`` is at least 2r (the default 16 serves r up to 8). Those two need
    ``training.precision: bf16`` or ``fp32`` (PEFT cannot rewrite a 4-bit weight exactly), no
    DoRA, and a reference-free method (sft, orpo, simpo). ``loftq`` starts B A at the rank-r
    part of what NF4 quantisation lost (W - dequant(Q(W))), so training starts nearer the
    full-precision base; it needs ``training.precision: nf4`` and no DoRA, and leaves the base as
    it is (best served on the nf4 base it corrects). Any but ``default`` needs no parent (the
    parent's weights are the start) and is not for method reward."""

    @field_validator("target_modules")
    @classmethod
    def _identifiers(cls, value: list[str] | None) -> list[str] | None:
        if value is None or value == [ALL_LINEAR]:
            return value
        bad = [name for name in value if not name.replace("_", "").isalnum()]
        if bad:
            raise ValueError(
                f"module names {bad!r} are not plain layer names like 'q_proj' (or the single entry {ALL_LINEAR!r})"
            )
        return value

    def resolved_for(self, linear: Sequence[str], attention: Sequence[str], mlp: Sequence[str]) -> LoraConfig:
        """This config with explicit module names for one base, ``mlp`` folded in.

        Args:
            linear: the base's linear layer names (LM head excluded), for ``all-linear``.
            attention: the family's attention projections, the default targets.
            mlp: the family's MLP projections, added when ``mlp`` is on.
        """
        names = list(self.target_modules or attention)
        if names == [ALL_LINEAR]:
            names = sorted(linear)
        if self.mlp:
            names = [*names, *mlp]
        return self.model_copy(update={"target_modules": list(dict.fromkeys(names)), "mlp": False})

    @property
    def modules(self) -> list[str]:
        """The target modules, once :meth:`resolved_for` the base (the run does that first)."""
        if self.target_modules is None or self.mlp or self.target_modules == [ALL_LINEAR]:
            raise RuntimeError("lora targets are resolved against the base first (LoraConfig.resolved_for)")
        return list(self.target_modules)


class TrainerConfig(RecipeSection):
    """How long and how hard to train; shared by every method."""

    precision: Literal["nf4", "int8", "bf16", "fp32"] = "nf4"
    """How the frozen base's weights are stored for training: nf4 is QLoRA's 4-bit NormalFloat."""
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Dtype the forward and backward compute in; ``auto`` lets the hardware decide (bf16 on
    CUDA >= 8.0 and CPUs with native bf16, fp16 on older GPUs, fp32 on other CPUs, where bf16
    is emulated and an order of magnitude slower)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; ``auto`` takes CUDA when torch sees a GPU."""
    epochs: float = Field(default=1.0, gt=0, le=1000)
    """Passes over the training set (ignored when max_steps is set)."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps."""
    batch_size: int = Field(default=4, ge=1, le=1024)
    """Examples per forward pass."""
    grad_accum: int = Field(default=1, ge=1, le=1024)
    """Forward passes per optimizer step (the effective batch is batch_size * grad_accum * processes)."""
    processes: int = Field(default=1, ge=1, le=64)
    """Data-parallel processes (DDP through accelerate: gloo on CPU, NCCL on GPUs, one GPU each);
    each takes ``batch_size`` examples a pass, so the global batch grows with it."""
    learning_rate: float = Field(default=2e-4, gt=0, le=1.0)
    """Peak learning rate of AdamW."""
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Share of the steps spent warming the learning rate up from 0."""
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    """AdamW weight decay on the LoRA weights."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Gradient clipping norm."""
    max_length: int = Field(default=512, ge=8, le=131072)
    """Longest tokenized example; longer ones are truncated (and dropped if no loss token is left)."""
    packing: bool = True
    """Padding-free batches: a batch's examples are concatenated into one row with per-example
    positions, so no compute is spent on pad tokens (examples never attend to each other). SFT
    only: the other methods pad each batch (TRL has no padding-free DPO, KTO... yet), so setting
    it true for them is an error rather than a setting that does nothing."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 20-30% slower."""
    eval_steps: int | None = Field(default=None, ge=1)
    """Also evaluate every this many steps (evaluation always runs once at the end)."""
    save_steps: int = Field(default=50, ge=1)
    """Write a resumable checkpoint every this many steps."""
    keep_checkpoints: int = Field(default=2, ge=1, le=100)
    """How many recent checkpoints to keep while training (all are removed once registered)."""
    logging_steps: int = Field(default=1, ge=1)
    """Emit a progress event every this many steps."""
    report_to: list[Literal["trackio", "mlflow", "wandb", "tensorboard"]] = Field(default_factory=list, max_length=4)
    """Experiment trackers to log the run to, through transformers' integrations (each needs its
    package installed: ``pip install trackio``...). Empty: nothing is sent anywhere. The run is
    named ``<name>-<run key>``; the version records it, and a trackio run records the version."""
    project: str = Field(default="adapterhub", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """The trackers' project (trackio's project, an MLflow experiment name)."""


class RecipeBase(RecipeSection):
    """The common part of every recipe. Each method subclasses it with ``method: Literal[...]`` and
    its own section (see :class:`adapterhub.training.methods.sft.SFTRecipe`)."""

    method: str
    """The training method, a name in :data:`adapterhub.training.methods.METHODS`; each method's
    recipe class narrows it to its own name."""
    name: str
    """Adapter name in the registry; each run registers the next version of it."""
    description: str = Field(default="", max_length=2000)
    """Free text, kept with the version."""
    base: str | None = None
    """The base this recipe is written for (e.g. HuggingFaceTB/SmolLM2-135M-Instruct); checked
    against the hub's base when set."""
    parent: str | None = None
    """An adapter ref (name, name@3, name:prod) to continue from: its LoRA weights are the start,
    and the new version records it as parent."""
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    """Seeds the eval split, LoRA initialisation, data order and dropout."""
    dataset: DatasetConfig
    """The training data."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """The adapter's shape (with a parent, the parent's shape is used and this must match)."""
    training: TrainerConfig = Field(default_factory=TrainerConfig)
    """Trainer settings."""
    forgetting_check: bool = True
    """Measure perplexity on a small fixed general-text set with and without the adapter and
    record both, so a user sees how much general capability the adapter cost."""

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        try:
            return validate_name(value, field="name")
        except ConfigError as e:
            raise ValueError(str(e)) from None

    @field_validator("parent")
    @classmethod
    def _valid_parent(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(AdapterRef.parse(value))
        except ConfigError as e:
            raise ValueError(str(e)) from None

    def combination_problems(self) -> list[str]:
        """Settings that are valid alone but cannot work together, each naming its field and the
        fix (the loader reports them with the field errors, before anything loads)."""
        problems: list[str] = []
        if self.method != "sft" and self.training.packing and "packing" in self.training.model_fields_set:
            problems.append(f"training.packing: true is SFT's padding-free batching; method {self.method!r} pads "
                            "each batch (TRL has no padding-free path for it): remove training.packing")
        if self.lora.use_dora and self.training.precision == "int8":
            problems.append("lora.use_dora: true over training.precision: 'int8' fails at the second step (PEFT "
                            "dequantises the int8 weight for DoRA's magnitude, after which bitsandbytes' int8 layer "
                            "cannot run); set training.precision: nf4, bf16 or fp32, or turn DoRA off")
        init = self.lora.init
        if init != "default" and self.method == "reward":
            problems.append(f"lora.init: {init!r} with method 'reward': the reward model's LoRA and score head "
                            "start their own way; use lora.init: default")
            return problems
        if init != "default" and self.parent is not None:
            problems.append(f"lora.init: {init!r} with parent {self.parent!r}: a run from a parent starts at the "
                            "parent's weights; remove lora.init or the parent")
        if init == "loftq":
            return problems + self._loftq_problems()
        if init not in REWRITING_INITS:
            return problems
        if self.training.precision in ("nf4", "int8"):
            problems.append(
                f"lora.init: {init!r} rewrites the base's weights (W - B0 A0), which cannot be done exactly on a "
                f"quantised base (training.precision: {self.training.precision!r}: PEFT refuses PiSSA there, and "
                "OLoRA re-quantises the rest, so the adapter converted for the shared base would not give what "
                "was trained); set training.precision: bf16 or fp32, or lora.init: default")
        if self.lora.use_dora:
            problems.append(f"lora.init: {init!r} with lora.use_dora: the conversion to a plain LoRA over the "
                            "base cannot carry DoRA's magnitudes; turn one of them off")
        if self.method not in REFERENCE_FREE:
            problems.append(
                f"lora.init: {init!r} with method {self.method!r}: its loss runs the base with the adapter "
                f"off, which a rewritten base no longer is; use lora.init: default (or method {', '.join(REFERENCE_FREE)})")
        return problems

    def _loftq_problems(self) -> list[str]:
        problems = []
        if self.training.precision != "nf4":
            problems.append(f"lora.init: 'loftq' corrects the NF4 quantisation error of the base, and "
                            f"training.precision is {self.training.precision!r}; set training.precision: nf4, "
                            "or lora.init: default")
        if self.lora.use_dora:
            problems.append("lora.init: 'loftq' with lora.use_dora: DoRA's magnitudes are measured before LoftQ's "
                            "start is set; turn one of them off")
        return problems

    def resolved(self) -> dict[str, Any]:
        """Every field with its effective value, as stored with the version."""
        return self.model_dump(mode="json")
