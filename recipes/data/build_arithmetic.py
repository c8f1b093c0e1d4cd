"""Build the arithmetic prompts for GRPO (``arithmetic_train.jsonl``, ``arithmetic_eval.jsonl``).

Prompt-only data with the exact answer beside each prompt: GRPO's reward functions check the reply
format (``Answer: <integer>`` and nothing else) and the number. Each prompt is a short
conversation: one solved example (a different random problem per row, so copying its number is
never right) and then the question. Zero-shot, SmolLM2-135M never uses the format, so a format
reward would have nothing to compare; with the worked example it uses the format but answers
almost at random (greedy: 0/24 right in our check), which leaves GRPO a task to improve.
Single-digit sums and differences; fixed seed; held-out questions never appear in training::

    .venv/bin/python recipes/data/build_arithmetic.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSTRUCTION = "Reply with only 'Answer: ' followed by the number."


def problem(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", a + b
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", a - b


def main() -> None:
    rng = random.Random(6)
    questions: dict[str, int] = {}
    while len(questions) < 110:
        question, answer = problem(rng)
        questions.setdefault(question, answer)
    order = sorted(questions)
    rng.shuffle(order)
    rows = []
    for question in order:
        while True:
            demo, demo_answer = problem(rng)
            if demo != question:
                break
        prompt = [
            {"role": "user", "content": f"{demo} {INSTRUCTION}"},
            {"role": "assistant", "content": f"Answer: {demo_answer}"},
            {"role": "user", "content": f"{question} {INSTRUCTION}"},
        ]
        rows.append({"prompt": prompt, "answer": str(questions[question])})
    for name, part in (("arithmetic_train.jsonl", rows[30:]), ("arithmetic_eval.jsonl", rows[:30])):
        with open(HERE / name, "w") as f:
            for row in part:
                f.write(json.dumps(row) + "\n")
    print(f"{len(rows) - 30} training prompts, 30 held-out prompts")


if __name__ == "__main__":
    main()
