"""Recipes as the training screen sees them: found on disk, edited in a form, shown as a command.

The training screen edits a handful of a recipe's fields (:data:`FORM_FIELDS`). It never writes
the recipe file: the fields the user changed become ``--set KEY=VALUE`` overrides, the same
overrides the CLI takes, so the command the screen shows is exactly the run it starts.

The form is user input, so it is a pydantic model (:class:`TrainingForm`, ``extra="forbid"``);
the screen validates the whole form on every keystroke and shows each error under its field.
Whole-recipe problems (an unknown dataset format, a parent on another base) come from the
library when the user starts, through the backend.
"""

from __future__ import annotations

import copy
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from adapterhub.core.refs import AdapterRef, validate_name
from adapterhub.errors import ConfigError

if TYPE_CHECKING:
    from adapterhub_tui.backend import Preferences

Method = Literal["sft", "dpo", "orpo", "simpo", "kto", "reward", "grpo", "rloo", "ppo"]
METHODS: tuple[str, ...] = get_args(Method)
"""The library's methods in its order (a test keeps them equal to ``adapterhub.training.methods.METHODS``)."""

FORM_FIELDS: dict[str, str] = {
    "method": "method",
    "name": "name",
    "parent": "parent",
    "dataset": "dataset.path",
    "r": "lora.r",
    "alpha": "lora.alpha",
    "lr": "training.learning_rate",
    "steps": "training.max_steps",
}
"""Form field -> the recipe key it edits (a dotted path, as ``adapterhub train --set`` takes)."""


class TrainingForm(BaseModel):
    """The training screen's form: the key fields of a recipe, as the user typed them."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    method: Method
    """Training method; the recipe's other settings must suit it."""

    name: str
    """Name of the adapter to register; the run becomes its next version."""

    parent: str | None = None
    """Ref of the adapter version to start from (``name``, ``name@3``, ``name:prod``), or none."""

    dataset: str | None = None
    """A JSONL file (relative paths are relative to the recipe file); empty keeps the recipe's."""

    r: int | None = Field(default=None, ge=1, le=256)
    """LoRA rank; empty keeps the recipe's (or the library default)."""

    alpha: float | None = Field(default=None, gt=0, le=4096)
    """LoRA alpha (the update is scaled by alpha / r); empty keeps the recipe's."""

    lr: float | None = Field(default=None, gt=0, le=1)
    """Peak learning rate; empty keeps the recipe's."""

    steps: int | None = Field(default=None, ge=1, le=1_000_000)
    """Optimizer steps; empty keeps the recipe's (which may train by epochs instead)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value, field="name")

    @field_validator("parent", mode="before")
    @classmethod
    def _parent(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return str(AdapterRef.parse(value))

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str | None, info: ValidationInfo) -> str | None:
        root = Path((info.context or {}).get("root", "."))
        if value is not None and not (root / Path(value).expanduser()).is_file():
            raise ValueError(
                f"file {value!r} does not exist (relative paths start at {str(root)!r}); "
                "give the path of a JSONL file"
            )
        return value


@dataclass(frozen=True)
class RecipeInfo:
    """A recipe file found on disk (or written for the user, like DPO on votes)."""

    path: Path
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.data.get("method", "?"))

    @property
    def title(self) -> str:
        return self.path.stem


def load_recipe(path: Path | str) -> RecipeInfo:
    """Read a recipe YAML (only to fill the form; the library validates it fully).

    Raises:
        ConfigError: the file is missing, is not YAML, or is not a mapping.
    """
    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"recipe file {str(path)!r} does not exist; pick one from recipes/") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"recipe {str(path)!r} cannot be read: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r} is not a YAML mapping; it must start with `method:`")
    return RecipeInfo(path, data)


def default_recipe_dirs() -> list[Path]:
    """``./recipes`` and the project's bundled ``recipes/`` (next to the installed library)."""
    import adapterhub

    bundled = Path(adapterhub.__file__).resolve().parent.parent / "recipes"
    found = []
    for folder in (Path.cwd() / "recipes", bundled):
        if folder.is_dir() and folder.resolve() not in {f.resolve() for f in found}:
            found.append(folder)
    return found


def find_recipes(folders: Iterable[Path]) -> list[RecipeInfo]:
    """Every readable ``*.yaml`` recipe in ``folders`` (not recursive), sorted by name."""
    recipes = []
    for folder in folders:
        for path in sorted(Path(folder).glob("*.y*ml")):
            try:
                recipes.append(load_recipe(path))
            except ConfigError:
                continue
    return recipes


def get_key(data: Mapping[str, Any], key: str) -> Any:
    """``data["a"]["b"]`` for ``key="a.b"``; None when any part is missing."""
    value: Any = data
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def form_values(recipe: RecipeInfo) -> dict[str, str]:
    """The form's text for each field, read from the recipe (empty where it has none)."""
    values = {}
    for name, key in FORM_FIELDS.items():
        value = get_key(recipe.data, key)
        values[name] = "" if value is None else str(value)
    return values


def check_form(
    raw: Mapping[str, str], *, root: Path | None = None
) -> tuple[TrainingForm | None, dict[str, str]]:
    """Validate the form's text.

    Args:
        raw: field -> text as typed.
        root: the folder relative dataset paths start at (the recipe's folder).

    Returns:
        The form (None when invalid) and one message per field that has a problem.
    """
    try:
        data = {k: (v.strip() or None) for k, v in raw.items()}
        return TrainingForm.model_validate(data, context={"root": root or Path.cwd()}), {}
    except ValidationError as e:
        problems: dict[str, str] = {}
        for error in e.errors():
            where = str(error["loc"][0]) if error["loc"] else "form"
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.setdefault(where, message)
        return None, problems


def overrides(recipe: RecipeInfo, form: TrainingForm) -> dict[str, Any]:
    """The ``--set`` overrides: each form field whose value differs from the recipe's."""
    changed = {}
    for name, key in FORM_FIELDS.items():
        value = getattr(form, name)
        current = get_key(recipe.data, key)
        if value is None and (current is None or name != "parent"):
            continue  # an empty field keeps the recipe's value; only parent can be removed
        if current is None or _as_text(current) != _as_text(value):
            changed[key] = value
    return changed


def cli_command(recipe: RecipeInfo, sets: Mapping[str, Any]) -> str:
    """The exact ``adapterhub train`` command for ``recipe`` with overrides ``sets``."""
    try:
        shown = recipe.path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = recipe.path
    parts = ["adapterhub", "train", str(shown)]
    for key, value in sets.items():
        parts += ["--set", f"{key}={_as_text(value)}"]
    return shlex.join(parts)


VOTES_RECIPE = "dpo-on-votes.yaml"
_VOTES_DEFAULTS: dict[str, Any] = {
    "lora": {"r": 16, "alpha": 16},
    "training": {"max_steps": 30, "batch_size": 2, "learning_rate": 5.0e-5},
}


def write_votes_recipe(
    votes: Preferences, *, name: str, parent: str | None, like: RecipeInfo | None = None
) -> RecipeInfo:
    """Write the DPO recipe over compare's votes in ``votes.recipe_folder`` and return it (its
    dataset is the votes' file: by name beside it, else by its path where the training runs).

    The settings come from ``like`` (a bundled DPO recipe) when there is one, else from small
    defaults; name, parent and dataset are the votes'. The file is rewritten on every offer, so
    it always names the current pairs file and the adapter that currently wins most.
    """
    data: dict[str, Any] = copy.deepcopy(dict(like.data)) if like else copy.deepcopy(_VOTES_DEFAULTS)
    data.update(method="dpo", name=name)
    data.pop("parent", None)
    if parent:
        data["parent"] = parent
    dataset = dict(data.get("dataset") or {})
    dataset.pop("name", None)
    folder = Path(votes.recipe_folder)
    dataset["path"] = votes.path.name if votes.path.parent == folder else str(votes.path)
    data["dataset"] = dataset
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / VOTES_RECIPE
    source = f" (settings from {like.path.name})" if like else ""
    header = (
        f"# adapterhub train {path}\n"
        f"# DPO over the preference pairs voted in `adapterhub tui` compare{source}.\n"
        "# Rewritten by the TUI's DPO offer (ctrl+y); copy it elsewhere to keep your edits.\n"
    )
    ordered = {k: data.pop(k) for k in ("method", "name", "parent", "dataset") if k in data}
    path.write_text(header + yaml.safe_dump({**ordered, **data}, sort_keys=False), encoding="utf-8")
    return RecipeInfo(path, {**ordered, **data})


def _as_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1:
        return str(int(value))
    return str(value)
