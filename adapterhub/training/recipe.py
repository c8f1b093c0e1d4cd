"""Training recipes: the YAML a user writes, validated into pydantic models.

A recipe has a common part (adapter name, dataset, LoRA shape, trainer settings, optional parent)
that every method shares, and one section named after its method (``sft:``, ``dpo:`` …) for that
method's own knobs. ``method:`` is the discriminator: :func:`parse_recipe` reads it first, looks the
method up in :mod:`adapterhub.training.methods`, and validates the whole document against that
method's recipe class, so an ``sft`` recipe with a ``dpo:`` section is an unknown field.

Design choices:

* **Every problem at once.** Pydantic collects all errors of a document; :func:`parse_recipe`
  turns them into one :class:`~adapterhub.errors.ConfigError` whose lines each name the field
  (``training.learning_rate``), show the value with ``!r`` and say how to fix it (with a
  "did you mean" for misspelt fields). Checks that need the file system (does the dataset file
  exist?) run in the same pass and join the same list.
* **``extra="forbid"`` everywhere**: a typo is an error, never a silently ignored setting.
* **Overrides are applied to the raw document** before validation (``--set training.max_steps=20``
  on the CLI, ``training={"max_steps": 20}`` or ``training__max_steps=20`` in Python), so an
  override is validated exactly like the file.
* **No TRL or PEFT here.** These models are the public contract; methods translate them into
  TRL/PEFT objects in one place each (``methods/<name>.py``).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adapterhub.core.refs import AdapterRef, validate_name
from adapterhub.errors import ConfigError

MethodName = Literal["sft", "dpo", "orpo", "simpo", "grpo", "reward", "ppo"]
METHOD_NAMES: tuple[str, ...] = get_args(MethodName)
ALL_LINEAR = "all-linear"


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
    over an nf4 base too; the serving engine refuses it (its batched kernel is plain LoRA), so
    serve it merged into a base or through ``Hub.generate``."""

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
    """Forward passes per optimizer step (the effective batch is batch_size * grad_accum)."""
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
    positions, so no compute is spent on pad tokens (examples never attend to each other)."""
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


class RecipeBase(RecipeSection):
    """The common part of every recipe. Each method subclasses it with ``method: Literal[...]`` and
    its own section (see :class:`adapterhub.training.methods.sft.SFTRecipe`)."""

    method: str
    """The training method: sft, dpo, orpo, simpo, grpo, reward or ppo."""
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

    def resolved(self) -> dict[str, Any]:
        """Every field with its effective value, as stored with the version."""
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- parsing


def load_recipe(
    source: str | Path | Mapping[str, Any] | RecipeBase,
    overrides: Mapping[str, Any] | list[str] | None = None,
) -> tuple[RecipeBase, Path]:
    """Read, override and validate a recipe.

    Args:
        source: a YAML path, an already-parsed mapping, or a recipe (returned as is, with overrides
            applied when given).
        overrides: ``["training.max_steps=20", ...]`` (CLI ``--set``), or a mapping whose keys are
            dotted or ``__``-joined paths, or nested mappings (``{"training": {"max_steps": 20}}``).

    Returns:
        The recipe and the folder its relative dataset paths are resolved against.

    Raises:
        ConfigError: lists every problem found, each naming field, value and fix.
    """
    if isinstance(source, RecipeBase):
        root = Path.cwd()
        data: dict[str, Any] = source.model_dump(mode="json", exclude_unset=True)
        label = f"recipe {source.name!r}"
    elif isinstance(source, Mapping):
        root, data, label = Path.cwd(), copy.deepcopy(dict(source)), "recipe"
    else:
        path = Path(source).expanduser()
        label = str(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"recipe file {str(path)!r} does not exist; check the path") from None
        except OSError as e:
            raise ConfigError(f"recipe file {str(path)!r} cannot be read ({e})") from e
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{label} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{label} must be a YAML mapping of fields, got {type(loaded).__name__}")
        root, data = path.resolve().parent, loaded
    if overrides:
        data = apply_overrides(data, overrides)
    return parse_recipe(data, root=root, label=label), root


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any] | list[str]) -> dict[str, Any]:
    """A copy of ``data`` with overrides set at their paths (see :func:`load_recipe`).

    Raises:
        ConfigError: an override is not ``key=value`` or walks into a non-mapping.
    """
    out = copy.deepcopy(dict(data))
    pairs: list[tuple[str, Any]] = []
    problems: list[str] = []
    if isinstance(overrides, Mapping):
        pairs = [(k.replace("__", "."), v) for k, v in _flatten(overrides)]
    else:
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                problems.append(f"override {item!r} is not KEY=VALUE; write e.g. training.max_steps=20")
                continue
            try:
                value = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                value = raw
            pairs.append((key.strip(), value))
    for key, value in pairs:
        node: dict[str, Any] = out
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                problems.append(f"override {key!r}: {where!r} is {child!r}, not a section")
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return out


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items.extend(_flatten(value, path + "."))
        else:
            items.append((path, value))
    return items


def parse_recipe(data: Mapping[str, Any], *, root: Path | None = None, label: str = "recipe") -> RecipeBase:
    """Validate a recipe mapping against its method's recipe class.

    Args:
        root: folder that relative dataset paths are resolved against (checked to exist).
        label: names the recipe in the error message (usually its path).

    Raises:
        ConfigError: every problem at once.
    """
    from adapterhub.training.methods import available_methods, get_method

    method = data.get("method")
    if method is None:
        raise ConfigError(
            f"field 'method' is missing; add method: one of {', '.join(available_methods())}", source=label
        )
    if method not in available_methods():
        hint = (
            f"method {method!r} is not built yet"
            if method in METHOD_NAMES
            else f"method {method!r} is unknown"
        )
        raise ConfigError(
            f"{hint}; use one of {', '.join(available_methods())} (field 'method')", source=label
        )
    recipe_cls = get_method(method).recipe
    problems: list[str] = []
    recipe: RecipeBase | None = None
    try:
        recipe = recipe_cls.model_validate(dict(data))
    except ValidationError as e:
        problems.extend(_describe(error, recipe_cls) for error in e.errors())
    problems.extend(_check_files(data, root or Path.cwd()))
    if problems or recipe is None:
        raise ConfigError(list(dict.fromkeys(problems)), source=label)
    return recipe


def resolve_data_path(path: str, root: Path) -> Path:
    """A dataset path from a recipe, resolved against the recipe's folder."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else (root / candidate)


def _check_files(data: Mapping[str, Any], root: Path) -> list[str]:
    dataset = data.get("dataset")
    if not isinstance(dataset, Mapping):
        return []
    problems = []
    for key in ("path", "eval_path"):
        value = dataset.get(key)
        if isinstance(value, str) and not resolve_data_path(value, root).is_file():
            problems.append(
                f"dataset.{key}: file {value!r} does not exist (looked at "
                f"{str(resolve_data_path(value, root))!r}); relative paths are relative to the recipe file"
            )
    return problems


_FIXES = {
    "missing": "add it",
    "int_type": "give a whole number",
    "int_parsing": "give a whole number",
    "int_from_float": "give a whole number",
    "float_type": "give a number",
    "float_parsing": "give a number",
    "bool_type": "write true or false",
    "bool_parsing": "write true or false",
    "string_type": "give a text value",
    "list_type": "give a list, e.g. [q_proj, v_proj]",
    "dict_type": "give a section of fields",
    "model_type": "give a section of fields",
    "literal_error": "use one of the listed values",
}


def _describe(error: Mapping[str, Any], recipe_cls: type[BaseModel]) -> str:
    loc = [str(p) for p in error.get("loc", ())]
    field = ".".join(loc) or "recipe"
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        known = _known_fields(recipe_cls, loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known fields here: {', '.join(known)}"
        return f"{field}: unknown field (value {error.get('input')!r}); {hint}"
    if kind == "missing":
        return f"{field}: required field is missing; add it"
    fix = _FIXES.get(kind, "")
    value = error.get("input")
    shown = f" (got {value!r})" if not isinstance(value, Mapping) else ""
    return f"{field}: {message}{shown}" + (f"; {fix}" if fix else "")


def _known_fields(model: type[BaseModel], path: list[str]) -> list[str]:
    for part in path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)
