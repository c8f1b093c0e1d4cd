"""Promotion gates: rules an alias holds, checked every time it moves.

A rule compares one number of the version about to take the alias with a bound::

    adapterhub_capitals:acc>=parent        an evaluation: task ``adapterhub_capitals``, metric ``acc``,
                                           at least the parent's value on the same task and metric
    adapterhub_capitals:acc>=parent-0.02   ... within 0.02 of it
    adapterhub_sums:exact_match>0.5        ... above a fixed number
    forgetting<=1.2                        a training metric (no ``task:``) of the version itself;
                                           ``forgetting`` is the general-text perplexity ratio

Evaluation rules read the newest :class:`~adapterhub.registry.store.Evaluation` of that task and
metric; training rules read :attr:`Version.metrics`. A rule whose number is missing fails, saying
which evaluation to run: a gate never passes by default.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from adapterhub.errors import ConfigError

METRIC_ALIASES: Mapping[str, str] = {"forgetting": "general_ppl_ratio"}
"""Short names for training metrics a rule may use."""

_OPERATORS: Mapping[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RULE = re.compile(
    rf"""^\s*(?:(?P<task>[A-Za-z0-9_.\-/]+):)?(?P<metric>[A-Za-z0-9_.,\-]+)\s*
    (?P<op>>=|<=|>|<)\s*
    (?:(?P<parent>parent)\s*(?P<offset>[-+]\s*(?:\d+\.?\d*|\.\d+))?|(?P<number>{_NUMBER}))\s*$""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Gate:
    """One parsed rule; ``str(gate)`` is its canonical text (what the registry stores)."""

    task: str | None  # None: a training metric of the version
    metric: str
    op: str
    number: float | None = None  # a fixed bound; else the parent's value plus ``offset``
    offset: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Gate:
        """Read a rule such as ``task:acc>=parent`` or ``forgetting<=1.2``.

        Raises:
            ConfigError: the rule does not parse; the message shows the grammar.
        """
        match = _RULE.match(text)
        if match is None:
            raise ConfigError(
                f"gate {text!r} is not a rule; write TASK:METRIC OP BOUND (an evaluation) or "
                "METRIC OP BOUND (a training metric), OP one of >=, <=, >, <, BOUND a number, "
                "`parent` or `parent+0.01`; e.g. 'adapterhub_capitals:acc>=parent', 'forgetting<=1.2'",
                source="gate",
            )
        metric = match["metric"]
        task = match["task"]
        if task is None:
            metric = METRIC_ALIASES.get(metric, metric)
        if match["parent"]:
            offset = float(match["offset"].replace(" ", "")) if match["offset"] else 0.0
            return cls(task, metric, match["op"], None, offset)
        return cls(task, metric, match["op"], float(match["number"]))

    @property
    def relative(self) -> bool:
        """Whether the bound is the parent's value."""
        return self.number is None

    @property
    def subject(self) -> str:
        """What the rule measures: ``task:metric``, or a training metric's name."""
        return f"{self.task}:{self.metric}" if self.task else self.metric

    def __str__(self) -> str:
        if self.number is not None:
            bound = f"{self.number:g}"
        else:
            bound = "parent" + (f"{self.offset:+g}" if self.offset else "")
        return f"{self.subject}{self.op}{bound}"

    def holds(self, value: float, bound: float) -> bool:
        return _OPERATORS[self.op](value, bound)


@dataclass(frozen=True)
class GateCheck:
    """How one rule fared for one version."""

    gate: Gate
    ref: str
    value: float | None  # None: the version has no such number
    bound: float | None  # None: the parent has no such number (or no parent)
    parent: str | None = None
    missing: str = ""  # what to run or record when a number is missing

    @property
    def passed(self) -> bool:
        return self.value is not None and self.bound is not None and self.gate.holds(self.value, self.bound)

    def __str__(self) -> str:
        if self.missing:
            return f"{self.gate}: {self.missing}"
        against = f" ({self.parent})" if self.gate.relative else ""
        verdict = "passes" if self.passed else "fails"
        return f"{self.gate}: {self.ref} has {self.value:.4g}, bound {self.bound:.4g}{against}: {verdict}"


def parse_gates(rules: list[str] | tuple[str, ...]) -> list[Gate]:
    """Parse every rule, reporting all bad ones at once.

    Raises:
        ConfigError: one problem per rule that does not parse.
    """
    gates, problems = [], []
    for text in rules:
        try:
            gates.append(Gate.parse(text))
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems, source="gate")
    return gates
