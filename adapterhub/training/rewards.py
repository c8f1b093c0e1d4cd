"""GRPO's reward functions, named in a recipe: built-ins, a user's Python function, a reward model.

A recipe lists them under ``grpo.rewards``; each item has a ``type`` and its own fields, and the
group's reward is their weighted sum (TRL's ``reward_weights``)::

    rewards:
      - type: regex                 # 1.0 when the whole reply matches, else 0.0
        pattern: '^Answer: -?\\d+$'
      - type: exact_answer          # 1.0 when the number after "Answer:" equals the row's answer
        column: answer
      - type: length                # 1.0 at the target word count, falling linearly to 0
        target_words: 20
      - type: python                # any function(prompts, completions, **columns) -> list[float]
        function: my_package.rewards:concise
      - type: reward_model          # a registered reward-model version (LoRA + score head)
        ref: concise-rm@1

Design choices:

* **Callables, not classes TRL must know.** Every built-in is a small frozen dataclass with
  ``__call__(prompts, completions, **columns)`` and a ``__name__``, the signature TRL's
  ``GRPOTrainer`` calls; TRL logs each under its name (``rewards/<name>/mean``).
* **Completions are text.** A conversational completion (``[{"role": "assistant", ...}]``) is
  reduced to its text before matching, so the same function works for both data kinds.
* **A user function is imported by dotted path** (``pkg.module:function`` or
  ``pkg.module.function``) when the recipe is built, so a typo fails before any compute.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from adapterhub.errors import ConfigError
from adapterhub.training.recipe import RecipeSection

RewardFunction = Callable[..., list[float]]


class RegexReward(RecipeSection):
    """1.0 when the reply matches ``pattern``, else 0.0."""

    type: Literal["regex"]
    """A format check."""
    pattern: str = Field(min_length=1, max_length=1000)
    """A Python regular expression."""
    full_match: bool = True
    """Match the whole reply (stripped of surrounding whitespace); false: search anywhere in it."""
    weight: float = Field(default=1.0, ge=-100, le=100)
    """This reward's weight in the sum."""

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"pattern {value!r} is not a valid regular expression ({e})") from None
        return value


class ExactAnswerReward(RecipeSection):
    """1.0 when the answer extracted from the reply equals the row's ``column``, else 0.0."""

    type: Literal["exact_answer"]
    """An exact-answer check for arithmetic and other verifiable tasks."""
    column: str = Field(default="answer", min_length=1, max_length=100)
    """The dataset column holding the expected answer (kept beside ``prompt``)."""
    pattern: str = Field(default=r"Answer:\s*(-?\d+(?:\.\d+)?)", min_length=1, max_length=1000)
    """Regular expression whose first group is the reply's answer (the last match counts)."""
    numeric: bool = True
    """Compare as numbers (``7`` equals ``7.0``); false: compare stripped text."""
    weight: float = Field(default=1.0, ge=-100, le=100)
    """This reward's weight in the sum."""

    @field_validator("pattern")
    @classmethod
    def _one_group(cls, value: str) -> str:
        try:
            groups = re.compile(value).groups
        except re.error as e:
            raise ValueError(f"pattern {value!r} is not a valid regular expression ({e})") from None
        if groups < 1:
            raise ValueError(f"pattern {value!r} needs one capture group ( ... ) around the answer")
        return value


class LengthReward(RecipeSection):
    """1.0 at ``target_words`` words, falling linearly to 0.0 at ``tolerance`` words away."""

    type: Literal["length"]
    """A length target."""
    target_words: int = Field(ge=0, le=10000)
    """The ideal reply length in words."""
    tolerance: int = Field(default=20, ge=1, le=10000)
    """How many words off the target the reward reaches 0."""
    weight: float = Field(default=1.0, ge=-100, le=100)
    """This reward's weight in the sum."""


class PythonReward(RecipeSection):
    """A user's function ``f(prompts, completions, **columns) -> list[float]``."""

    type: Literal["python"]
    """Your own reward function."""
    function: str = Field(
        min_length=3, max_length=300, pattern=r"^[A-Za-z_][\w.]*[:.][A-Za-z_]\w*$"
    )
    """Dotted path: ``package.module:function`` or ``package.module.function`` (importable from
    the current directory or the installed packages)."""
    weight: float = Field(default=1.0, ge=-100, le=100)
    """This reward's weight in the sum."""


class RewardModelReward(RecipeSection):
    """The score of a registered reward-model version."""

    type: Literal["reward_model"]
    """A learnt reward (a version trained with ``method: reward``)."""
    ref: str = Field(min_length=1, max_length=200)
    """The reward model's ref (``name``, ``name@3``, ``name:prod``)."""
    weight: float = Field(default=1.0, ge=-100, le=100)
    """This reward's weight in the sum."""


RewardFunctionConfig = Annotated[
    RegexReward | ExactAnswerReward | LengthReward | PythonReward | RewardModelReward,
    Field(discriminator="type"),
]


# --------------------------------------------------------------------------- built-ins


def completion_text(completion: str | Sequence[Mapping[str, Any]]) -> str:
    """The text of a completion, plain or conversational (assistant turns joined)."""
    if isinstance(completion, str):
        return completion
    return "".join(
        str(m.get("content", "")) for m in completion if m.get("role", "assistant") == "assistant"
    )


@dataclass(frozen=True)
class RegexMatch:
    """Reward function: 1.0 when a completion matches ``pattern``."""

    pattern: str
    full_match: bool = True

    @property
    def __name__(self) -> str:
        return "format"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        regex = re.compile(self.pattern, re.DOTALL)
        match = regex.fullmatch if self.full_match else regex.search
        return [1.0 if match(completion_text(c).strip()) else 0.0 for c in completions]


@dataclass(frozen=True)
class ExactAnswer:
    """Reward function: 1.0 when the extracted answer equals the row's expected answer."""

    column: str = "answer"
    pattern: str = r"Answer:\s*(-?\d+(?:\.\d+)?)"
    numeric: bool = True

    @property
    def __name__(self) -> str:
        return "accuracy"

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Any
    ) -> list[float]:
        expected = columns.get(self.column)
        if expected is None:
            raise ConfigError(
                f"grpo.rewards: exact_answer reads column {self.column!r}, but the data has columns "
                f"{sorted(k for k in columns if not k.startswith(('trainer_', 'log_')))!r}; add an "
                f"{self.column!r} field to every row or set column: to the right name"
            )
        regex = re.compile(self.pattern)
        return [
            1.0 if self._same(regex.findall(completion_text(c)), want) else 0.0
            for c, want in zip(completions, expected, strict=True)
        ]

    def _same(self, found: list[Any], want: Any) -> bool:
        if not found:
            return False
        got = found[-1][0] if isinstance(found[-1], tuple) else found[-1]
        if not self.numeric:
            return str(got).strip() == str(want).strip()
        try:
            return float(got) == float(want)
        except (TypeError, ValueError):
            return False


@dataclass(frozen=True)
class LengthTarget:
    """Reward function: 1 - |words - target| / tolerance, floored at 0."""

    target_words: int
    tolerance: int = 20

    @property
    def __name__(self) -> str:
        return "length"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        return [
            max(
                0.0, 1.0 - abs(len(completion_text(c).split()) - self.target_words) / self.tolerance
            )
            for c in completions
        ]


def import_function(path: str, *, field: str = "function") -> RewardFunction:
    """Import ``package.module:function`` or ``package.module.function``.

    Raises:
        ConfigError: the module or attribute is missing, or it is not callable.
    """
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"{field}: cannot import module {module_name!r} of {path!r} ({e}); make it importable "
            "(run from its folder or install it)"
        ) from e
    func = getattr(module, attr, None)
    if not callable(func):
        raise ConfigError(f"{field}: {module_name!r} has no function {attr!r} (from {path!r})")
    return func  # type: ignore[no-any-return]


def build_reward_functions(
    configs: Sequence[Any],
    *,
    load_reward_model: Callable[[str], RewardFunction] | None = None,
) -> tuple[list[RewardFunction], list[float]]:
    """Turn recipe reward items into TRL reward functions and their weights.

    Args:
        configs: the recipe's ``grpo.rewards`` items.
        load_reward_model: turns a reward-model ref into a scorer (needs the loaded model), for
            ``type: reward_model`` items.

    Raises:
        ConfigError: a python function cannot be imported; a reward model is named but no loader given.
    """
    functions: list[RewardFunction] = []
    weights: list[float] = []
    for index, item in enumerate(configs):
        if isinstance(item, RegexReward):
            functions.append(RegexMatch(item.pattern, item.full_match))
        elif isinstance(item, ExactAnswerReward):
            functions.append(ExactAnswer(item.column, item.pattern, item.numeric))
        elif isinstance(item, LengthReward):
            functions.append(LengthTarget(item.target_words, item.tolerance))
        elif isinstance(item, PythonReward):
            functions.append(import_function(item.function, field=f"grpo.rewards.{index}.function"))
        elif isinstance(item, RewardModelReward):
            if load_reward_model is None:
                raise ConfigError(
                    f"grpo.rewards.{index}: a reward model needs the loaded base; run it through a recipe"
                )
            functions.append(load_reward_model(item.ref))
        else:  # pragma: no cover - the discriminated union admits nothing else
            raise ConfigError(f"grpo.rewards.{index}: unknown reward {item!r}")
        weights.append(item.weight)
    return functions, weights
