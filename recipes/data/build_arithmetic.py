"""Build the arithmetic prompts for GRPO (``arithmetic_train.jsonl``, ``arithmetic_eval.jsonl``).

Prompt-only data with the exact answer beside each prompt: GRPO's reward functions check the reply
format (``Answer: <integer>`` on its own) and the number. Small sums and differences, so that a
135M base gets some right and the group of samples has something to prefer. Fixed seed; the
held-out problems never appear in training::

    .venv/bin/python recipes/data/build_arithmetic.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTRUCTION = "Reply with only 'Answer: ' followed by the number."


def problem(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", a + b
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", a - b


def main() -> None:
    rng = random.Random(6)
    seen: set[str] = set()
    rows: list[dict[str, object]] = []
    while len(rows) < 230:
        question, answer = problem(rng)
        if question in seen:
            continue
        seen.add(question)
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"{question} {INSTRUCTION}"}],
                "answer": str(answer),
            }
        )
    for name, part in (
        ("arithmetic_train.jsonl", rows[:200]),
        ("arithmetic_eval.jsonl", rows[200:]),
    ):
        with open(HERE / name, "w") as f:
            for row in part:
                f.write(json.dumps(row) + "\n")
    print("200 training prompts, 30 held-out prompts")


if __name__ == "__main__":
    main()
