"""Loading a recipe: read the YAML, apply overrides, validate it against its method's recipe class.

``method:`` is the discriminator: :func:`parse_recipe` reads it first, looks the method up in
:data:`adapterhub.training.methods.METHODS` and validates the whole document against
that method's recipe class (the schema is :mod:`adapterhub.training.recipe`). This module sits
above the schema and the methods; the runner and the CLI call it.

Design choices:

* **Every problem at once.** Pydantic collects all errors of a document; :func:`parse_recipe`
  turns them into one :class:`~adapterhub.errors.ConfigError` whose lines each name the field
  (``training.learning_rate``), show the value with ``!r`` and say how to fix it (with a
  "did you mean" for misspelt fields). Checks that need the file system (does the dataset file
  exist?) run in the same pass and join the same list.
* **Overrides are applied to the raw document** before validation (``--set training.max_steps=20``
  on the CLI, ``training={"max_steps": 20}`` or ``training__max_steps=20`` in Python), so an
  override is validated exactly like the file.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from adapterhub.errors import ConfigError
from adapterhub.training.datasets import resolve_data_path
from adapterhub.training.methods import METHODS
from adapterhub.training.recipe import RecipeBase


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
    method = data.get("method")
    if method is None:
        raise ConfigError(f"field 'method' is missing; add method: one of {', '.join(METHODS)}", source=label)
    if not isinstance(method, str) or method not in METHODS:  # YAML may give a list: not hashable
        raise ConfigError(
            f"method {method!r} is unknown; use one of {', '.join(METHODS)} (field 'method')", source=label
        )
    recipe_cls = METHODS[method].recipe
    problems: list[str] = []
    recipe: RecipeBase | None = None
    try:
        recipe = recipe_cls.model_validate(dict(data))
    except ValidationError as e:
        problems.extend(_describe(error, recipe_cls) for error in e.errors())
    if recipe is not None:
        problems.extend(recipe.combination_problems())
    problems.extend(_check_files(data, root or Path.cwd()))
    if problems or recipe is None:
        raise ConfigError(list(dict.fromkeys(problems)), source=label)
    return recipe


DATA_PATH_FIELDS = ("path", "eval_path")
"""The ``dataset`` fields that name files, relative to the recipe's folder."""


def with_absolute_data_paths(data: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """The recipe mapping with its dataset files named by absolute path (relative ones resolved
    against ``root``), so it reads the same files wherever it is sent."""
    dataset = data.get("dataset")
    if not isinstance(dataset, Mapping):
        return dict(data)
    fixed = {k: str(resolve_data_path(v, root).absolute()) if k in DATA_PATH_FIELDS and isinstance(v, str) else v
             for k, v in dataset.items()}
    return {**data, "dataset": fixed}


def _check_files(data: Mapping[str, Any], root: Path) -> list[str]:
    dataset = data.get("dataset")
    if not isinstance(dataset, Mapping):
        return []
    problems = []
    for key in DATA_PATH_FIELDS:
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
