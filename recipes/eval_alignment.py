"""Held-out quality of the bundled alignment adapters against their parents and the base: the issue's table.

    python recipes/eval_alignment.py concise-dpo concise-orpo concise-simpo concise-kto arithmetic-grpo

Each ref is compared with its own parent (the version it was trained from) and with the bare
base, on prompts that no training set contains (``tests/training/test_bundled_recipes.py`` checks
that), with greedy decoding. Each ref's, parent's and the base's answers are generated once per run.

* **dpo / orpo / simpo / kto** (``recipes/data/concise_eval.jsonl``, 30 questions): shortness and
  correctness side by side. Shortness: a rule judge that matches the taught preference, *the
  shorter answer wins* (word count; a tie is half a win; an empty answer always loses), against
  the parent and against the base, and the mean words. Correctness: the share of the 20 factual
  questions (Oslo, Saturn, Fe ...) whose answer names the expected fact, so a win by saying
  less of the fact shows. Also the share with assistant filler ("question", "hope", "help",
  "glad", "happy", "feel free", "let me know").
* **grpo / sft on arithmetic** (``recipes/data/arithmetic_eval.jsonl``, 30 problems): format rate
  (the reply is exactly ``Answer: <integer>``) and accuracy (that integer is right).
* **ppo** (concise questions): the mean score of the PPO run's reward model on the parent's and
  the policy's answers, and the KL of the policy to the parent, estimated on one sample per
  prompt at the training temperature (sum over tokens of log π - log π_parent).

Prints a Markdown table (for the issue note) after the per-prompt answers, then the wall and CPU
seconds of the evaluation and the machine. Use ``--home`` for a hub home other than
``$ADAPTERHUB_HOME``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONCISE_EVAL = HERE / "data" / "concise_eval.jsonl"
ARITHMETIC_EVAL = HERE / "data" / "arithmetic_eval.jsonl"
FILLER = ("question", "hope", "help", "glad", "happy", "feel free", "let me know")
FORMAT = re.compile(r"Answer: (-?\d+)")


def words(text: str) -> int:
    return len(text.split())


def concise_judge(candidate: str, parent: str) -> float:
    """1 when ``candidate`` is shorter (in words), 0.5 on a tie, 0 when longer; empty loses."""
    a, b = words(candidate), words(parent)
    if a == 0 or b == 0:
        return 0.5 if a == b else float(a > 0)
    return 1.0 if a < b else 0.5 if a == b else 0.0


def has_filler(text: str) -> bool:
    low = text.lower()
    return any(f in low for f in FILLER)


def has_keyword(text: str, keywords: list[str]) -> bool:
    low = text.lower()
    return any(k.lower() in low for k in keywords)


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Generator:
    """Batched generation on the hub's one base with any registered adapter switched in."""

    def __init__(self, hub: Any) -> None:
        from adapterhub.engine.simple import ReferencePath

        self.base = hub.base
        self.tokenizer = self.base.tokenizer
        self.registry = hub.registry
        self.reference = ReferencePath(self.base, hub.registry)
        self.cache: dict[tuple[str | None, int, int], list[str]] = {}

    def texts(self, ref: str | None, prompts: list[list[dict[str, str]]], *, max_tokens: int) -> list[str]:
        """Greedy answers of ``ref`` (None: the base), generated once per run for these prompts."""
        key = (ref, hash(json.dumps(prompts)), max_tokens)
        if key not in self.cache:
            self.cache[key] = [t for t, _, _ in self.generate(ref, prompts, max_tokens=max_tokens)]
        return self.cache[key]

    def generate(
        self,
        ref: str | None,
        prompts: list[list[dict[str, str]]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
        batch: int = 10,
    ) -> list[tuple[str, list[int], list[int]]]:
        """(text, prompt ids, response ids) per prompt; greedy unless ``temperature`` > 0."""
        import torch

        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        results = []
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch):
            rendered = [self.base.render_chat(p) for p in prompts[start : start + batch]]
            width = max(map(len, rendered))
            ids = torch.full((len(rendered), width), pad)
            mask = torch.zeros_like(ids)
            for i, row in enumerate(rendered):
                ids[i, width - len(row) :] = torch.tensor(row)
                mask[i, width - len(row) :] = 1
            kwargs: dict[str, Any] = {
                "max_new_tokens": max_tokens,
                "pad_token_id": pad,
                "eos_token_id": list(self.base.eos_token_ids),
            }
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
            else:
                kwargs["do_sample"] = False
            with self.reference.activated(ref) as model, torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            for row, full in zip(rendered, out, strict=True):
                response = full[width:].tolist()
                cut = next(
                    (i + 1 for i, t in enumerate(response) if t in self.base.eos_token_ids),
                    len(response),
                )
                response = response[:cut]
                results.append(
                    (tok.decode(response, skip_special_tokens=True).strip(), row, response)
                )
        return results

    def sum_logprob(
        self, ref: str | None, prompt: list[int], response: list[int], temperature: float
    ) -> float:
        """Sum over response tokens of log π(token) at ``temperature``, under ``ref`` (None: base)."""
        import torch

        ids = torch.tensor([prompt + response])
        with self.reference.activated(ref) as model, torch.inference_mode():
            logits = model(input_ids=ids).logits
        logits = logits[0, len(prompt) - 1 : -1].float() / temperature
        logp = torch.log_softmax(logits, -1).gather(1, torch.tensor(response)[:, None])
        return float(logp.sum())


def one_line(text: str, width: int = 48) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def eval_concise(
    gen: Generator, version: Any, parent: str | None, max_tokens: int
) -> dict[str, Any]:
    rows = read_rows(CONCISE_EVAL)
    prompts = [r["prompt"] for r in rows]
    # The base first: loading an adapter into the reference path moves the bare base's logits
    # (measured: up to 1.7 on one prompt), so the base column is taken before any adapter loads.
    base = gen.texts(None, prompts, max_tokens=max_tokens)
    mine = gen.texts(version.ref, prompts, max_tokens=max_tokens)
    theirs = gen.texts(parent, prompts, max_tokens=max_tokens)
    print(f"\n## {version.ref} ({version.method}) vs {parent or 'base'}")
    for row, a, b in zip(rows, mine, theirs, strict=True):
        s = concise_judge(a, b)
        print(
            f"{'W' if s == 1 else 'T' if s == 0.5 else 'L'} {one_line(row['prompt'][-1]['content'], 34):<34} | "
            f"{one_line(a)} | {one_line(b)}"
        )
    keyed = [i for i, r in enumerate(rows) if r["keywords"]]
    n = len(rows)

    def named(answers: list[str]) -> int:
        return sum(has_keyword(answers[i], rows[i]["keywords"]) for i in keyed)

    return {
        "ref": version.ref,
        "method": version.method,
        "parent": parent or "base",
        "n": n,
        "factual": len(keyed),
        "win_rate": sum(map(concise_judge, mine, theirs)) / n,
        "win_rate_base": sum(map(concise_judge, mine, base)) / n,
        "words": tuple(sum(map(words, x)) / n for x in (mine, theirs, base)),
        "filler": tuple(sum(map(has_filler, x)) / n for x in (mine, theirs, base)),
        "keyword": tuple(named(x) for x in (mine, theirs, base)),
    }


def eval_arithmetic(gen: Generator, version: Any, parent: str | None) -> dict[str, Any]:
    rows = read_rows(ARITHMETIC_EVAL)
    prompts = [r["prompt"] for r in rows]
    answers = {ref: gen.texts(ref, prompts, max_tokens=10) for ref in (None, version.ref, parent)}  # base first
    print(f"\n## {version.ref} ({version.method}) vs {parent or 'base'}")

    def grade(text: str, answer: str) -> tuple[bool, bool]:
        match = FORMAT.fullmatch(text.strip())
        return bool(match), bool(match and match.group(1) == answer)

    graded = {ref: [grade(t, r["answer"]) for t, r in zip(texts, rows, strict=True)]
              for ref, texts in answers.items()}
    for i, row in enumerate(rows):
        a, b = answers[version.ref][i], answers[parent][i]
        print(
            f"{one_line(row['prompt'][-1]['content'], 16):<16} = {row['answer']:>3} | "
            f"{'+' if graded[version.ref][i][1] else '-'} {one_line(a, 20):<20} | "
            f"{'+' if graded[parent][i][1] else '-'} {one_line(b, 20)}"
        )
    order = (version.ref, parent, None)
    return {
        "ref": version.ref,
        "method": version.method,
        "parent": parent or "base",
        "n": len(rows),
        "format": tuple(sum(f for f, _ in graded[ref]) for ref in order),
        "accuracy": tuple(sum(c for _, c in graded[ref]) for ref in order),
    }


def eval_ppo(gen: Generator, version: Any, parent: str | None, max_tokens: int) -> dict[str, Any]:
    from adapterhub.models.base import cpu_packing_kept
    from adapterhub.training.reward_model import load_reward_scorer

    rm_ref = version.recipe["ppo"]["reward_model"]
    temperature = float(version.recipe["ppo"]["temperature"])
    rows = read_rows(CONCISE_EVAL)
    prompts = [r["prompt"] for r in rows]
    mine = gen.generate(version.ref, prompts, max_tokens=max_tokens)
    theirs = gen.generate(parent, prompts, max_tokens=max_tokens)
    info = gen.base.info
    # the reward adapter joins the policy's PEFT model; its loading must not move the NF4 base
    with gen.reference.activated(version.ref) as model, cpu_packing_kept(gen.base.model):
        scorer = load_reward_scorer(
            gen.registry,
            rm_ref,
            model,
            gen.tokenizer,
            base_fingerprint=info.fingerprint,
            template_hash=info.template_hash,
            adapter_name="eval_reward",
        )
        reward_mine = scorer.score(prompts, [a for a, _, _ in mine])
        reward_theirs = scorer.score(prompts, [b for b, _, _ in theirs])
    print(f"\n## {version.ref} ({version.method}) vs {parent or 'base'}, scored by {rm_ref}")
    for row, (a, _, _), (b, _, _), ra, rb in zip(
        rows, mine, theirs, reward_mine, reward_theirs, strict=True
    ):
        print(
            f"{ra:+6.2f} {rb:+6.2f} {one_line(row['prompt'][-1]['content'], 30):<30} | {one_line(a, 40)} | "
            f"{one_line(b, 40)}"
        )
    samples = gen.generate(
        version.ref, prompts, max_tokens=max_tokens, temperature=temperature, seed=1
    )
    kls = [
        gen.sum_logprob(version.ref, p, r, temperature) - gen.sum_logprob(parent, p, r, temperature)
        for _, p, r in samples
    ]
    n = len(rows)
    return {
        "ref": version.ref,
        "method": version.method,
        "parent": parent or "base",
        "reward_model": rm_ref,
        "reward": (sum(reward_mine) / n, sum(reward_theirs) / n),
        "kl": sum(kls) / n,
        "words": (sum(words(a) for a, _, _ in mine) / n, sum(words(b) for b, _, _ in theirs) / n),
        "train_eval_kl": version.metrics.get("eval_kl"),
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| adapter | method | parent | held-out measure | adapter | parent | base |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        head = f"| {r['ref']} | {r['method']} | {r['parent']} |"
        if "win_rate" in r:
            n, k = r["n"], r["factual"]
            lines += [
                f"{head} shorter answer wins, {n} prompts (vs parent / vs base) | "
                f"**{r['win_rate']:.0%}** / **{r['win_rate_base']:.0%}** | — | — |",
                f"{head} mean words | **{r['words'][0]:.1f}** | {r['words'][1]:.1f} | {r['words'][2]:.1f} |",
                f"{head} answers with filler | {r['filler'][0]:.0%} | {r['filler'][1]:.0%} | {r['filler'][2]:.0%} |",
                f"{head} names the expected fact, {k} factual | **{r['keyword'][0]}/{k}** | "
                f"{r['keyword'][1]}/{k} | {r['keyword'][2]}/{k} |",
            ]
        elif "accuracy" in r:
            n = r["n"]
            f, a = r["format"], r["accuracy"]
            lines += [
                f"{head} format rate, {n} problems | **{f[0]}/{n}** | {f[1]}/{n} | {f[2]}/{n} |",
                f"{head} accuracy, {n} problems | **{a[0]}/{n}** | {a[1]}/{n} | {a[2]}/{n} |",
            ]
        else:
            lines += [
                f"{head} mean reward of {r['reward_model']}, 30 prompts | **{r['reward'][0]:+.3f}** | "
                f"{r['reward'][1]:+.3f} | — |",
                f"{head} KL(policy ‖ parent), sampled, nats/answer | {r['kl']:.3f} | 0 | — |",
                f"{head} mean words | {r['words'][0]:.1f} | {r['words'][1]:.1f} | — |",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "refs", nargs="+", help="adapter refs (dpo, orpo, simpo, kto, ppo or sft versions on the concise data; grpo or sft on arithmetic)"
    )
    parser.add_argument(
        "--home", default=None, help="hub home (default $ADAPTERHUB_HOME or ~/.adapterhub)"
    )
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    from adapterhub import Hub
    from adapterhub.cli import quiet_libraries

    quiet_libraries()
    hub = Hub(args.home)
    gen = Generator(hub)
    results = []
    started, cpu = time.monotonic(), os.times()
    for ref in args.refs:
        version = hub.resolve(ref)
        task = "arithmetic" if "arithmetic" in str(version.recipe["dataset"].get("path")) else "concise"
        if version.method == "ppo":
            results.append(eval_ppo(gen, version, version.parent, args.max_tokens))
        elif task == "arithmetic" and version.method in ("sft", "grpo", "rloo"):
            results.append(eval_arithmetic(gen, version, version.parent))
        elif task == "concise" and version.method in ("sft", "dpo", "orpo", "simpo", "kto"):
            results.append(eval_concise(gen, version, version.parent, args.max_tokens))
        else:
            print(f"{version.ref}: method {version.method!r} has no held-out measure here; skipped")
    used = os.times()
    cpu_s = used.user + used.system - cpu.user - cpu.system
    print(f"\n{table(results)}\n\n[evaluation: {time.monotonic() - started:.0f}s wall, {cpu_s:.0f}s CPU "
          f"(user+sys) on {hub.platform.summary()}; base in {hub.precision}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
