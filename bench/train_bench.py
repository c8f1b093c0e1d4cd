"""SFT training throughput: adapterhub's SFT run against a plain TRL ``SFTTrainer`` + PEFT run on the
same data, model, precision and batch shape, in one process; prints the ratio (target >= 1.0).

    .venv/bin/python bench/train_bench.py                       # nf4, 2 pairs of 6 steps x 8 examples
    .venv/bin/python bench/train_bench.py --steps 4 --precision bf16 --repeat 1

Both sides train the same LoRA (r=16, alpha=32, q/k/v/o, dropout 0.05) over the same frozen base
loaded the same way (``adapterhub.models.base.load_base``), with the same optimizer settings, seed,
``max_steps`` and per-step batch of ``--batch-size`` examples from ``recipes/data/json_train.jsonl``
(both samplers are seeded alike, so they draw the same examples: the token counts printed agree), gradient checkpointing off on
both (``--trl-defaults`` adds a third run with TRL's own defaults, which turn it on):

* **adapterhub**: ``Hub.train`` on an SFT recipe: examples tokenized through the chat-template
  gates (loss on assistant tokens only), padding-free batches.
* **plain TRL**: ``trl.SFTTrainer(model, peft_config=LoraConfig(...), args=SFTConfig(...))`` over
  bitsandbytes' own NF4 layers in TRL's best dtype on this machine (bf16 autocast where bf16 is
  native, fp32 elsewhere; adapterhub may instead dequantize NF4 once where bitsandbytes has no
  fast kernel, see ``adapterhub.core.hardware``), on the
  same conversations (TRL applies the same chat template; loss on the whole sequence; batches
  padded to their longest example).

Tokens are the real (non-pad) tokens each trainer counted (``num_input_tokens_seen``: all tokens
of the padding-free rows; the attention-mask sum of the padded ones); the time is the
trainer's own ``train_runtime`` (the training loop, not model loading). The CPU is shared with
other work, so each run also reports tokens per CPU-second of this process, which a noisy
neighbour disturbs less (though spinning OpenMP threads inflate it too under heavy load); pairs
run in ABBA order (ours, TRL, TRL, ours …) and the ratio is the median over pairs.

The base is the real default base, materialised once by the test suite into ``.tmp/test-home``
(override with ``ADAPTERHUB_TEST_CACHE``); a temporary hub home links to it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cached_base import hub_on_cached_base
from header import print_header

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "recipes" / "data" / "json_train.jsonl"
LORA = {"r": 16, "alpha": 32.0, "dropout": 0.05, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}


@dataclass
class RunStats:
    """One training run."""

    name: str
    seconds: float  # the trainer's train_runtime
    cpu_seconds: float  # this process's CPU time over the same span
    tokens: int  # real tokens of the examples consumed

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def tokens_per_cpu_s(self) -> float:
        return self.tokens / self.cpu_seconds


def run_ours(hub: Any, args: argparse.Namespace) -> RunStats:
    recipe = {
        "method": "sft",
        "name": "bench",
        "seed": args.seed,
        "dataset": {"path": str(DATA), "eval_fraction": 0},
        "lora": {"r": LORA["r"], "alpha": LORA["alpha"], "dropout": LORA["dropout"], "target_modules": LORA["targets"]},
        "training": {
            "precision": args.precision, "max_steps": args.steps, "batch_size": args.batch_size,
            "learning_rate": 1e-3, "warmup_ratio": 0.0, "lr_scheduler": "constant", "max_length": 512,
            "save_steps": 10_000, "packing": True, "gradient_checkpointing": False,
        },
        "forgetting_check": False,
    }
    cpu0 = time.process_time()
    version = hub.train(recipe)
    cpu = time.process_time() - cpu0
    # CPU time also covers loading the base and saving; scale it to the training loop's share of wall.
    share = version.metrics["train_runtime_s"] / version.metrics["run_wall_s"]
    return RunStats("adapterhub", version.metrics["train_runtime_s"], cpu * share, version.metrics["train_tokens"])


def run_plain_trl(hub: Any, args: argparse.Namespace, rows: list[dict[str, Any]], *,
                  trl_defaults: bool = False) -> RunStats:
    import datasets
    import peft
    import trl
    from transformers.trainer_callback import PrinterCallback

    from adapterhub.models.base import load_base

    # What a TRL user gets: bitsandbytes' own NF4 layers (no dense copy), in TRL's best dtype here
    # (bf16 autocast where bf16 is native, else fp32: emulated bf16 is an order of magnitude slower)
    platform = hub.platform.with_overrides(nf4="kernel")
    base = load_base(hub.base_info.path, args.precision, for_training=True, platform=platform)
    model = base.model
    if args.precision in ("nf4", "int8"):
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=trl_defaults)
    lora = peft.LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                           target_modules=LORA["targets"], task_type="CAUSAL_LM")
    extra = {} if trl_defaults else {"activation_checkpointing": False}
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as out:
        config = trl.SFTConfig(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
            learning_rate=1e-3, lr_scheduler_type="constant", warmup_steps=0, seed=args.seed,
            data_seed=args.seed, max_length=512, use_cpu=not base.platform.is_cuda,
            # TRL's best dtype here: bf16 autocast only where bf16 is native, as ours decides
            bf16=args.precision != "fp32" and base.platform.compute_dtype == "bfloat16",
            fp16=args.precision != "fp32" and base.platform.compute_dtype == "float16",
            save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=1, optim="adamw_torch",
            dataloader_num_workers=0, include_num_input_tokens_seen="non_padding", **extra,
        )
        trainer = trl.SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                                 processing_class=base.tokenizer, peft_config=lora)
        trainer.remove_callback(PrinterCallback)  # as the runner does: no per-step dict printing
        cpu0, wall0 = time.process_time(), time.monotonic()
        output = trainer.train()
        wall = time.monotonic() - wall0
        cpu = (time.process_time() - cpu0) * output.metrics["train_runtime"] / wall
    name = "plain TRL (TRL defaults)" if trl_defaults else "plain TRL"
    return RunStats(name, output.metrics["train_runtime"], cpu, int(trainer.state.num_input_tokens_seen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", default="nf4", choices=["nf4", "int8", "bf16", "fp32"])
    parser.add_argument("--repeat", type=int, default=2, help="ours/TRL pairs, in ABBA order")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trl-defaults", action="store_true", help="also run plain TRL with its own defaults")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    from adapterhub.core.hardware import detect_platform

    platform = detect_platform()
    print_header("train_bench", platform, base=args.precision, compute=platform.compute_dtype, lora="float32")

    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        hub = hub_on_cached_base(Path(tmp), args.precision)
        ours: list[RunStats] = []
        theirs: list[RunStats] = []
        extra: list[RunStats] = []
        for i in range(args.repeat):  # ABBA order, so a drift in the neighbours' load hurts both alike
            if i % 2 == 0:
                ours.append(run_ours(hub, args))
                theirs.append(run_plain_trl(hub, args, rows))
            else:
                theirs.append(run_plain_trl(hub, args, rows))
                ours.append(run_ours(hub, args))
        if args.trl_defaults:
            extra.append(run_plain_trl(hub, args, rows, trl_defaults=True))

    load = os.getloadavg()[0]
    print(f"\nSFT, {args.precision} base, {args.steps} steps x {args.batch_size} examples, "
          f"load average {load:.1f} on {os.cpu_count()} CPUs")
    print(f"{'run':<26} {'tokens':>7} {'train s':>8} {'tokens/s':>9} {'tokens/CPU-s':>13}")
    for stats in [s for pair in zip(ours, theirs, strict=True) for s in pair] + extra:
        print(f"{stats.name:<26} {stats.tokens:7d} {stats.seconds:8.1f} {stats.tokens_per_s:9.1f} "
              f"{stats.tokens_per_cpu_s:13.1f}")
    wall = statistics.median(o.tokens_per_s / t.tokens_per_s for o, t in zip(ours, theirs, strict=True))
    cpu = statistics.median(o.tokens_per_cpu_s / t.tokens_per_cpu_s for o, t in zip(ours, theirs, strict=True))
    print(f"ratio adapterhub / plain TRL: {wall:.2f}x tokens/s, {cpu:.2f}x tokens per CPU-second (target >= 1.0)")
    for stats in extra:
        print(f"ratio adapterhub / {stats.name}: {statistics.median(o.tokens_per_s for o in ours) / stats.tokens_per_s:.2f}x tokens/s")


if __name__ == "__main__":
    main()
