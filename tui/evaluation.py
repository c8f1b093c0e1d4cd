"""Evaluation as the registry screen sees it: default tasks, the dialog's form, the command.

The evaluate dialog asks for two things, the tasks and a document limit, and shows the
``adapterhub eval`` command they equal, as the training screen shows its ``adapterhub train``
command. The HTTP backend, which cannot run an evaluation, answers with the same command plus
``--server``, so the user can paste it into a shell.

Design choices:

* The form is user input, so it is a pydantic model (:class:`EvaluationForm`, ``extra="forbid"``)
  and every problem is reported at once, as a :class:`~adapterhub.errors.ConfigError`.
* Only what the dialog can know is checked here: a task that looks like a path must exist.
  Whether a folder holds a task YAML, or lm-eval knows a task name, the library says when the run
  starts.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adapterhub.errors import ConfigError, describe_validation_error

_LIMIT_HINT = "; a whole number of documents, or blank for all"

EVALS_FOLDER = Path("recipes") / "evals"
"""Where the bundled task folders live (``recipes/evals/capitals``, ``recipes/evals/sums``)."""


class EvaluationForm(BaseModel):
    """The evaluate dialog's answer."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    tasks: tuple[str, ...] = Field(min_length=1)
    """Task folders or YAML files (``recipes/evals/capitals``) or lm-eval task names."""

    limit: int | None = Field(default=None, ge=1)
    """Score only the first ``limit`` documents of each task; every document when None."""

    @field_validator("tasks")
    @classmethod
    def _paths_exist(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        missing = [t for t in tasks if _looks_like_path(t) and not Path(t).expanduser().exists()]
        if missing:
            raise ValueError(f"no task folder or file {', '.join(repr(t) for t in missing)}")
        return tasks


def read_form(tasks: str, limit: str) -> EvaluationForm:
    """The form from the dialog's two fields: tasks split on commas, a blank limit meaning all.

    Raises:
        ConfigError: every problem of both fields.
    """
    names = tuple(t.strip() for t in tasks.split(",") if t.strip())
    if not names:
        raise ConfigError("tasks: name at least one task folder (recipes/evals/capitals) or "
                          "lm-eval task name")
    try:
        return EvaluationForm.model_validate({"tasks": names, "limit": limit.strip() or None})
    except ValidationError as e:
        problems = describe_validation_error(e.errors(include_url=False), root="form")
        raise ConfigError([line + _LIMIT_HINT * (where == "limit") for where, line in problems]) from e


def default_tasks(cwd: Path | None = None) -> list[str]:
    """The task folders under ``recipes/evals/`` of the working directory, as relative paths.

    When the working directory has none, the bundled ones next to the installed library (as
    absolute paths).
    """
    import adapterhub

    here = Path.cwd() if cwd is None else cwd
    for root, shown in ((here / EVALS_FOLDER, EVALS_FOLDER),
                        (Path(adapterhub.__file__).resolve().parent.parent / EVALS_FOLDER, None)):
        folders = sorted(p for p in root.glob("*") if p.is_dir() and any(p.glob("*.y*ml")))
        if folders:
            return [str(shown / p.name if shown is not None else p) for p in folders]
    return []


def eval_command(
    ref: str, tasks: Sequence[str], limit: int | None = None, *, server: str | None = None
) -> str:
    """The exact ``adapterhub eval`` command for an evaluation of ``ref``."""
    parts = ["adapterhub", "eval", ref]
    for task in tasks:
        parts += ["--task", task]
    if limit is not None:
        parts += ["--limit", str(limit)]
    if server is not None:
        parts += ["--server", server]
    return shlex.join(parts)


def _looks_like_path(task: str) -> bool:
    return "/" in task or "\\" in task or task.endswith((".yaml", ".yml"))
