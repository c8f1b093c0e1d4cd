"""Evaluations recorded next to immutable versions, and promotion gates checked as an alias moves."""

from pathlib import Path

import pytest

from adapterhub.errors import AdapterNotFoundError, ConfigError, GateError
from adapterhub.models.adapters import CONFIG_FILE, WEIGHTS_FILE
from adapterhub.registry import Evaluation, Gate, Registry


def _register(registry: Registry, lora_dir: Path, **kw):  # type: ignore[no-untyped-def]
    files = {CONFIG_FILE: lora_dir / CONFIG_FILE, WEIGHTS_FILE: lora_dir / WEIGHTS_FILE}
    return registry.register("pirate", files, base_fingerprint="fp", template_hash="th", method="sft", **kw)


def _score(ref: str, value: float, task: str = "capitals", metric: str = "acc") -> Evaluation:
    name, number = ref.split("@")
    return Evaluation(name, int(number), task, metric, value, stderr=0.1, samples=12, harness="lm-eval 0.4.13")


def test_evaluations_point_at_a_version_and_the_newest_wins(registry: Registry, lora_dir: Path) -> None:
    version = _register(registry, lora_dir)
    registry.record_evaluations([_score("pirate@1", 0.25), _score("pirate@1", 0.5, metric="acc_norm")])
    registry.record_evaluations([_score("pirate@1", 0.75)])
    assert [(e.metric, e.value) for e in registry.evaluations("pirate")] == [
        ("acc", 0.25), ("acc_norm", 0.5), ("acc", 0.75)]
    latest = registry.evaluations("pirate@1", latest=True)
    assert [(e.subject, e.value, e.samples) for e in latest] == [
        ("capitals:acc", 0.75, 12), ("capitals:acc_norm", 0.5, 12)]
    assert registry.resolve("pirate@1") == version  # the version itself never changes

    with pytest.raises(AdapterNotFoundError):
        registry.record_evaluations([_score("pirate@1", 0.1), _score("pirate@9", 0.1)])
    with pytest.raises(ConfigError, match=r"capitals:acc=nan"):
        registry.record_evaluations([_score("pirate@1", float("nan"))])
    assert len(registry.evaluations("pirate@1")) == 3  # all or nothing

    registry.delete("pirate@1")  # evaluations go with their version
    _register(registry, lora_dir)
    assert registry.evaluations("pirate") == []


@pytest.mark.parametrize(("text", "canonical"), [
    ("capitals:acc>=parent", "capitals:acc>=parent"),
    (" capitals:acc >= parent - 0.02 ", "capitals:acc>=parent-0.02"),
    ("sums:exact_match,strict-match>0.5", "sums:exact_match,strict-match>0.5"),
    ("forgetting<=1.2", "general_ppl_ratio<=1.2"),
])
def test_rules_parse_to_a_canonical_text(text: str, canonical: str) -> None:
    assert str(Gate.parse(text)) == canonical
    assert str(Gate.parse(canonical)) == canonical


@pytest.mark.parametrize("text", ["acc", "capitals:acc=>parent", "capitals:acc>=mother", ":acc>1", "acc>=1 2"])
def test_bad_rules_say_the_grammar(text: str) -> None:
    with pytest.raises(ConfigError, match=r"gate .* is not a rule; write TASK:METRIC OP BOUND"):
        Gate.parse(text)


def test_a_gated_alias_refuses_a_worse_child_and_moves_for_a_better_one(
    registry: Registry, lora_dir: Path
) -> None:
    _register(registry, lora_dir, metrics={"general_ppl_ratio": 1.05})
    _register(registry, lora_dir, parent="pirate@1", metrics={"general_ppl_ratio": 1.1})
    _register(registry, lora_dir, parent="pirate@1", metrics={"general_ppl_ratio": 1.5})
    registry.record_evaluations([_score("pirate@1", 0.5), _score("pirate@2", 0.4), _score("pirate@3", 0.6)])
    registry.tag("pirate@1", "prod")
    gates = ["capitals:acc>=parent", "forgetting<=1.2"]

    with pytest.raises(GateError) as info:  # worse than its parent: refused, rules not stored either
        registry.tag("pirate@2", "prod", gates=gates)
    assert "capitals:acc>=parent: pirate@2 has 0.4, bound 0.5 (pirate@1): fails" in str(info.value)
    assert [c.passed for c in info.value.checks] == [False, True]
    assert registry.resolve("pirate:prod").ref == "pirate@1"
    assert registry.gates("pirate", "prod") == []

    with pytest.raises(GateError, match=r"general_ppl_ratio<=1.2: pirate@3 has 1.5, bound 1.2"):
        registry.tag("pirate@3", "prod", gates=gates)  # better on the task, but it forgot too much
    registry.tag("pirate@2", "prod", gates=["capitals:acc>=parent-0.15"])  # within 0.15 of its parent
    assert registry.resolve("pirate:prod").ref == "pirate@2"
    assert [str(g) for g in registry.gates("pirate", "prod")] == ["capitals:acc>=parent-0.15"]

    with pytest.raises(GateError, match="pirate@1 has no parent to compare with"):
        registry.tag("pirate@1", "prod")  # the alias keeps its rules when moved again
    registry.tag("pirate@1", "prod", gates=[])  # removing them is explicit
    assert registry.resolve("pirate:prod").ref == "pirate@1"


def test_a_missing_evaluation_fails_the_gate_and_says_what_to_run(registry: Registry, lora_dir: Path) -> None:
    _register(registry, lora_dir)
    _register(registry, lora_dir, parent="pirate@1")
    registry.record_evaluations([_score("pirate@2", 0.9)])
    with pytest.raises(GateError, match=r"pirate@1 has no evaluation of capitals:acc; run `adapterhub eval pirate@1 --task capitals`"):
        registry.tag("pirate@2", "prod", gates=["capitals:acc>=parent"])
    with pytest.raises(GateError, match=r"pirate@2 has no training metric 'general_ppl_ratio'"):
        registry.tag("pirate@2", "prod", gates=["forgetting<=1.2"])
    checks = registry.check_gates("pirate@2", [Gate.parse("capitals:acc>0.5")])
    assert checks[0].passed and checks[0].value == 0.9
    with pytest.raises(ConfigError, match="2 problems"):
        registry.tag("pirate@2", "prod", gates=["nope", "also nope"])
