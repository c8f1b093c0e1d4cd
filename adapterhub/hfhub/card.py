"""The model card (README.md) of a pushed adapter version.

The YAML metadata is what the Hub indexes: ``base_model`` with ``base_model_relation: adapter``
(only when the base is a Hub id, since the Hub checks it), ``library_name: peft``,
``pipeline_tag: text-generation``, tags with the training method, and ``datasets`` when the recipe
names Hub datasets, and its evaluations as a ``model-index`` (the Hub's evaluation-results
metadata; marked unverified, since we ran them). The body is for a person: what the adapter is,
its recipe, metrics and evaluations, the forgetting check, lineage, and how to use it with
adapterhub, PEFT and vLLM. The card is a pure function of the manifest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from adapterhub.hfhub.manifest import MANIFEST_FILE

README_FILE = "README.md"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# vLLM accepts only these values for --max-lora-rank.
_VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def render_model_card(
    *,
    manifest: Mapping[str, Any],
    adapter_config: Mapping[str, Any],
    repo_id: str,
    tag: str,
    base_hub_id: str | None,
) -> str:
    """The README of a pushed version: Hub metadata, then what a person wants to know.

    Deterministic for a given version, so pushing it again changes nothing.
    """
    import yaml

    name, number, method = manifest["name"], manifest["number"], str(manifest["method"])
    metrics: Mapping[str, Any] = manifest.get("metrics") or {}
    recipe: Mapping[str, Any] = manifest.get("recipe") or {}
    meta: dict[str, Any] = {}
    if base_hub_id:
        meta["base_model"] = base_hub_id
        meta["base_model_relation"] = "adapter"
    meta["library_name"] = "peft"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["adapterhub", "lora", "peft", method.lower()]
    datasets = _dataset_ids(recipe)
    if datasets:
        meta["datasets"] = datasets
    evaluations: list[Mapping[str, Any]] = list(manifest.get("evaluations") or [])
    if evaluations:
        meta["model-index"] = [{"name": f"{name}@{number}", "results": _model_index(evaluations)}]
    base_text = (
        f"[{base_hub_id}](https://huggingface.co/{base_hub_id})"
        if base_hub_id
        else (f"the base `{manifest['base']['name']}`")
    )
    rank = adapter_config.get("r", "?")
    targets = adapter_config.get("target_modules") or []
    targets = sorted(targets) if isinstance(targets, list) else [str(targets)]
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(),
        "---",
        "",
        f"# {name} (version {number})",
        "",
        f"A LoRA adapter for {base_text}, trained with **{_method_label(method)}** and published "
        f"with adapterhub. This commit is tagged `{tag}`.",
        "",
        "## Adapter",
        "",
        "| | |",
        "|---|---|",
        f"| method | {_method_label(method)} |",
        f"| rank / alpha | {rank} / {adapter_config.get('lora_alpha', '?')} |",
        f"| target modules | {', '.join(targets) or '?'} |",
        f"| base fingerprint | `{manifest['base']['fingerprint'][:16]}…` |",
        f"| chat template hash | `{manifest['base']['template_hash'][:16]}…` |",
    ]
    if manifest.get("dataset_fingerprint"):
        lines.append(f"| dataset fingerprint | `{str(manifest['dataset_fingerprint'])[:16]}…` |")
    if datasets:
        lines.append(f"| datasets | {', '.join(datasets)} |")
    if recipe:
        lines += [
            "",
            "## Recipe",
            "",
            "```yaml",
            yaml.safe_dump(dict(recipe), sort_keys=True, allow_unicode=True).strip(),
            "```",
        ]
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {key} | {_fmt(value)} |" for key, value in sorted(metrics.items())]
    else:
        lines.append("No metrics were recorded for this version.")
    lines += ["", "## Evaluations", ""]
    if evaluations:
        lines += [
            "Measured with lm-evaluation-harness through adapterhub (`adapterhub eval`):",
            "",
            "| task | metric | value | stderr | samples | harness |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {e['task']} | {e['metric']} | {_fmt(float(e['value']))} | "
            f"{'' if e.get('stderr') is None else _fmt(float(e['stderr']))} | {e.get('samples') or ''} | "
            f"{e.get('harness', '')} |"
            for e in evaluations
        ]
    else:
        lines.append("Not evaluated before it was pushed (`adapterhub eval REF --task ...`).")
    forgetting = {k: v for k, v in metrics.items() if _is_forgetting_metric(k)}
    lines += ["", "### Forgetting check", ""]
    if forgetting:
        lines.append(
            "Perplexity on a small fixed general-text set with the adapter and without it (the "
            "base): how much general capability the adapter cost. A ratio near 1 means it cost little."
        )
        lines += [""] + [f"- {key}: {_fmt(value)}" for key, value in sorted(forgetting.items())]
    else:
        lines.append("Not measured for this version.")
    lines += ["", "## Lineage", "", f"- version: `{name}@{number}` ({method})"]
    if manifest.get("parent"):
        lines.append(f"- started from: `{manifest['parent']}`")
    source = manifest.get("source") or {}
    if source.get("hub"):
        lines.append(
            f"- pulled earlier from `{source['hub']}` at commit `{source.get('commit', '?')}`"
        )
    elif source:
        lines.append(f"- source: `{json.dumps(dict(source), sort_keys=True)}`")
    lines.append(
        f"- manifest: [`{MANIFEST_FILE}`]({MANIFEST_FILE}) (fingerprints, metrics, hashes)"
    )
    base_arg = base_hub_id or "BASE_MODEL"
    lines += [
        "",
        "## Use it",
        "",
        "With adapterhub (checks the base fingerprint and chat template before loading):",
        "",
        "```bash",
        f"adapterhub pull {repo_id}@{tag} --name {name}",
        f'adapterhub generate {name} "Hello!"',
        "```",
        "",
        "With PEFT:",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base_arg}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", revision="{tag}")',
        f'model = PeftModel.from_pretrained(base, "{repo_id}", revision="{tag}")',
        "```",
        "",
        "With vLLM (multi-LoRA serving):",
        "",
        "```bash",
        f"vllm serve {base_arg} --enable-lora --max-lora-rank {_vllm_rank(rank)} \\",
        f"  --lora-modules {name}={repo_id}",
        "```",
        "",
    ]
    return "\n".join(lines)


def _model_index(evaluations: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Evaluations grouped by task, in the Hub's ``model-index`` shape."""
    by_task: dict[str, list[Mapping[str, Any]]] = {}
    for e in evaluations:
        by_task.setdefault(str(e["task"]), []).append(e)
    return [
        {
            "task": {"type": "text-generation"},
            "dataset": {"name": task, "type": task},
            "metrics": [{"type": str(e["metric"]), "value": round(float(e["value"]), 6),
                         "name": str(e["metric"]), "verified": False} for e in found],
        }
        for task, found in sorted(by_task.items())
    ]


def _method_label(method: str) -> str:
    labels = {
        "sft": "SFT",
        "dpo": "DPO",
        "orpo": "ORPO",
        "simpo": "SimPO",
        "grpo": "GRPO",
        "ppo": "PPO",
        "reward": "reward model",
        "imported": "an external trainer (imported)",
    }
    return labels.get(method.lower(), method)


def _is_forgetting_metric(key: str) -> bool:
    """The forgetting check's metrics (``general_ppl_base/_adapter/_ratio`` from training)."""
    lowered = key.lower()
    return lowered.startswith("general_ppl") or "forget" in lowered


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def _dataset_ids(recipe: Mapping[str, Any]) -> list[str]:
    """Hub dataset ids named in a recipe (``dataset.name``); local JSONL files are left out."""
    found: list[str] = []
    for key in ("dataset", "datasets", "eval_dataset"):
        value = recipe.get(key)
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, Mapping):  # a recipe's dataset: ``name`` is a `datasets` name
                item = item.get("name")
            if (
                isinstance(item, str)
                and HUB_ID.match(item)
                and not item.endswith((".json", ".jsonl", ".csv", ".parquet", ".txt", ".yaml"))
            ):
                found.append(item)
    return sorted(set(found))


def _vllm_rank(rank: Any) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that fits rank ``r``."""
    r = rank if isinstance(rank, int) else 8
    return next((v for v in _VLLM_RANKS if v >= r), _VLLM_RANKS[-1])
