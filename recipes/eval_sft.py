"""Held-out behaviour of a bundled SFT adapter against the base, side by side.

    python recipes/eval_sft.py json-sft --check json
    python recipes/eval_sft.py pirate-sft --check pirate --limit 5

Generates greedily for each of the 20 held-out prompts (``recipes/data/sft_heldout.jsonl``, in
neither training set) with the base and with the adapter, all in one mixed batch of the engine,
prints both answers and the rate at which each shows the taught behaviour:

* ``json``: the whole answer is one JSON object with exactly the keys ``answer`` (a string) and
  ``confidence`` (``high``, ``medium`` or ``low``);
* ``pirate``: the answer uses at least two distinct pirate markers (arr, ahoy, matey, ye, aye …).

``make demo`` runs this after training the demo recipe.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
HELDOUT = HERE / "data" / "sft_heldout.jsonl"
PIRATE_MARKERS = {
    "arr", "ahoy", "matey", "ye", "yer", "aye", "hearty", "landlubber", "landlubbers", "scallywag",
    "shiver", "savvy", "booty", "cap'n", "o'", "'tis", "'twas", "me hearties",
}


def is_strict_json(answer: str) -> bool:
    """One JSON object with exactly ``answer`` (str) and ``confidence`` (high|medium|low)."""
    try:
        value = json.loads(answer)
    except json.JSONDecodeError:
        return False
    return (
        isinstance(value, dict)
        and set(value) == {"answer", "confidence"}
        and isinstance(value["answer"], str)
        and value["confidence"] in ("high", "medium", "low")
    )


def is_pirate(answer: str) -> bool:
    """At least two distinct pirate markers."""
    words = set(re.findall(r"[a-z']+", answer.lower().replace("’", "'")))
    return len(words & PIRATE_MARKERS) >= 2


CHECKS = {"json": is_strict_json, "pirate": is_pirate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", help="adapter ref, e.g. json-sft or pirate-sft@2")
    parser.add_argument("--check", choices=sorted(CHECKS), required=True)
    parser.add_argument("--home", default=None, help="hub home (default $ADAPTERHUB_HOME or ~/.adapterhub)")
    parser.add_argument("--limit", type=int, default=20, help="use the first N held-out prompts")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--width", type=int, default=60, help="characters of each answer shown")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from adapterhub.cli import quiet_libraries

    quiet_libraries()
    from adapterhub import Hub
    from adapterhub.engine.engine import Engine
    from adapterhub.engine.types import GenerationRequest, SamplingParams

    hub = Hub(args.home)
    check = CHECKS[args.check]
    prompts = [json.loads(line)["prompt"] for line in HELDOUT.read_text().splitlines() if line.strip()]
    prompts = prompts[: args.limit]
    version = hub.resolve(args.ref)
    started = time.monotonic()
    sampling = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    # One mixed batch: every prompt once with the base and once with the adapter (the engine's
    # rows are checked equal to running each request alone).
    requests = [
        GenerationRequest(prompt_ids=tuple(hub.base.render_chat([{"role": "user", "content": p}])),
                          adapter=adapter, sampling=sampling)
        for p in prompts
        for adapter in (None, version.ref)
    ]
    with Engine(hub.base, hub.registry) as engine:
        results = [r.text.strip() for r in engine.generate_many(requests)]
    base_hits = adapter_hits = 0
    print(f"{'prompt':<34} | {'base':<{args.width}} | {version.ref}")
    for i, prompt in enumerate(prompts):
        base, tuned = results[2 * i], results[2 * i + 1]
        base_ok, tuned_ok = check(base), check(tuned)
        base_hits += base_ok
        adapter_hits += tuned_ok
        print(
            f"{prompt[:34]:<34} | {_mark(base_ok)} {_one_line(base, args.width - 2):<{args.width - 2}} "
            f"| {_mark(tuned_ok)} {_one_line(tuned, args.width)}"
        )
    n = len(prompts)
    print(
        f"\n{args.check} rate on {n} held-out prompts: base {base_hits}/{n} ({base_hits / n:.0%}), "
        f"{version.ref} {adapter_hits}/{n} ({adapter_hits / n:.0%})  "
        f"[{hub.precision} base, greedy, {args.max_tokens} tokens max, {time.monotonic() - started:.0f}s]"
    )
    return 0


def _mark(ok: bool) -> str:
    return "+" if ok else "-"


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
