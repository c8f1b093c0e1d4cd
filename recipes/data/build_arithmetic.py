"""Build the arithmetic data: GRPO prompts, the SFT parent's answers and the held-out problems.

Files written next to this script:

* ``arithmetic_train.jsonl``: 80 prompts for GRPO, the exact answer beside each (``answer``), so
  the reward functions can check the format (``Answer: <integer>`` and nothing else) and the number;
* ``arithmetic_sft.jsonl``: the same 80 prompts with the answer written out
  (``Answer: <integer>``), for the SFT parent of the SFT -> GRPO chain;
* ``arithmetic_eval.jsonl``: 30 held-out problems for ``recipes/eval_alignment.py``.

Each prompt is a short conversation: one solved example and then the question. Zero-shot,
SmolLM2-135M never uses the format, so a format reward would have nothing to compare; with the
worked example it uses the format but answers poorly (greedy: 7/30 held-out problems right),
which leaves SFT and GRPO a task to improve. Single-digit sums and differences, fixed seed.

Held out means held out everywhere: the 30 held-out questions are drawn first, and every worked
example (in training and in held-out prompts alike) is a *training* question, so no training row
shows a held-out question or its answer, not even as an example::

    .venv/bin/python recipes/data/build_arithmetic.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTRUCTION = "Reply with only 'Answer: ' followed by the number."
HELD_OUT = 30
QUESTIONS = 110


def problem(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", a + b
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", a - b


def prompt_for(question: str, demo: str, demo_answer: int) -> list[dict[str, str]]:
    return [
        {"role": "user", "content": f"{demo} {INSTRUCTION}"},
        {"role": "assistant", "content": f"Answer: {demo_answer}"},
        {"role": "user", "content": f"{question} {INSTRUCTION}"},
    ]


def write(name: str, rows: list[dict[str, object]]) -> None:
    with open(HERE / name, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    rng = random.Random(6)
    questions: dict[str, int] = {}
    while len(questions) < QUESTIONS:
        question, answer = problem(rng)
        questions.setdefault(question, answer)
    order = sorted(questions)
    rng.shuffle(order)
    held_out, train = order[:HELD_OUT], order[HELD_OUT:]

    def row(question: str) -> dict[str, object]:
        demo = rng.choice([q for q in train if q != question])
        return {"prompt": prompt_for(question, demo, questions[demo]), "answer": str(questions[question])}

    train_rows = [row(q) for q in train]
    eval_rows = [row(q) for q in held_out]
    sft_rows = [
        {"prompt": r["prompt"], "completion": [{"role": "assistant", "content": f"Answer: {r['answer']}"}]}
        for r in train_rows
    ]
    shown = {m["content"].removesuffix(f" {INSTRUCTION}") for r in train_rows for m in r["prompt"]}  # type: ignore[attr-defined]
    if shown & set(held_out):
        raise SystemExit(f"held-out problems leak into training: {sorted(shown & set(held_out))!r}")
    write("arithmetic_train.jsonl", train_rows)
    write("arithmetic_sft.jsonl", sft_rows)
    write("arithmetic_eval.jsonl", eval_rows)
    print(f"{len(train_rows)} training prompts (GRPO and SFT), {len(eval_rows)} held-out prompts")


if __name__ == "__main__":
    main()
