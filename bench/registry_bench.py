"""Registry operation latencies on each backend, measured in one run, side by side:

    .venv/bin/python bench/registry_bench.py                  # 20 registers, 200 resolves, 20 loads
    .venv/bin/python bench/registry_bench.py --registers 10 --postgres postgresql://u@host/db --s3 s3://b/p

Backends: SQLite + local blobs (the embedded default), SQLite + S3 blobs, PostgreSQL + local
blobs, PostgreSQL + S3 blobs. Unless given, PostgreSQL is a server started here from the system's
binaries (as the tests do: loopback TCP, ``fsync=off``) and S3 is moto's server on loopback, so
the S3 figures are the protocol's and the code's cost without a network, a lower bound for a
real store.

Operations (each timed alone, median and p90 over its repeats, in milliseconds):

* **register**: publish one version of a SmolLM2-135M-shaped LoRA (r=16 on q/k/v/o, fp32, 7.4 MB
  of weights, distinct bytes each time): blobs written, read back and verified, then the
  transaction that picks the number.
* **resolve**: ``name:prod`` to a version (alias lookup, the version's row, files and aliases).
* **load**: ``load_adapter``: both files read through their checksums, then parsed and checked.
* **open**: a new ``Registry`` on an existing database (schema check included), as each CLI
  command pays.

The ratio column compares each backend's median with SQLite + local blobs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from header import print_header

REPO = Path(__file__).resolve().parent.parent
HIDDEN, KV, LAYERS, RANK = 576, 192, 30, 16  # SmolLM2-135M's widths


def lora_files(seed: int) -> dict[str, bytes]:
    """A PEFT LoRA of SmolLM2-135M's shapes, as its two files."""
    import torch
    from safetensors.torch import save

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(LAYERS):
        for module, out in (("q_proj", HIDDEN), ("k_proj", KV), ("v_proj", KV), ("o_proj", HIDDEN)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, HIDDEN, generator=generator) * 0.02
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out, RANK, generator=generator) * 0.02
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": 2 * RANK, "lora_dropout": 0.0,
              "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "bias": "none",
              "task_type": "CAUSAL_LM", "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    return {"adapter_config.json": json.dumps(config).encode(), "adapter_model.safetensors": save(tensors)}


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls."""
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


@contextmanager
def servers(args: argparse.Namespace) -> Iterator[tuple[str | None, str | None, str]]:
    """(a PostgreSQL server URL without database, an S3 URL prefix, where they came from)."""
    sys.path.insert(0, str(REPO / "tests"))
    from backends import postgres_bindir, running_postgres, running_s3

    with ExitStack() as stack:
        pg, s3, notes = args.postgres, args.s3, []
        if pg is None:
            bindir = postgres_bindir()
            if bindir is None:
                notes.append("PostgreSQL: no server binaries, skipped")
            else:
                server = stack.enter_context(running_postgres(bindir))
                pg = server.create_database()
                notes.append(f"PostgreSQL: local server from {bindir} (fsync off)")
        else:
            notes.append("PostgreSQL: given")
        if s3 is None:
            import os

            import boto3

            moto = stack.enter_context(running_s3())
            os.environ.update(moto.env)
            boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
            s3 = "s3://bench/blobs"
            notes.append(f"S3: moto server on {moto.endpoint}")
        else:
            notes.append("S3: given")
        yield pg, s3, "; ".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registers", type=int, default=20)
    parser.add_argument("--resolves", type=int, default=200)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--postgres", help="a PostgreSQL database URL (default: start a local server)")
    parser.add_argument("--s3", help="an s3:// blob location (default: moto on loopback)")
    args = parser.parse_args()

    from adapterhub.core.hardware import detect_platform
    from adapterhub.registry import Registry

    print_header("registry_bench", detect_platform(), payload="fp32 LoRA tensors")
    payloads = [lora_files(seed) for seed in range(args.registers + 1)]
    print(f"  payload {len(payloads[0]['adapter_model.safetensors']) / 1e6:.1f} MB of weights per version "
          f"(r={RANK}, q/k/v/o, fp32); {args.registers} registers, {args.resolves} resolves, {args.loads} loads")

    with tempfile.TemporaryDirectory() as scratch, servers(args) as (pg, s3, notes):
        print(f"  servers {notes}")
        print("-" * 78)
        root = Path(scratch)
        backends: list[tuple[str, dict[str, str]]] = [
            ("sqlite + local", {"url": f"sqlite:///{root / 'a' / 'registry.db'}", "blobs": str(root / "a" / "blobs")}),
            ("sqlite + s3", {"url": f"sqlite:///{root / 'b' / 'registry.db'}", "blobs": f"{s3}-sqlite"}),
        ]
        if pg is not None:
            backends += [("postgresql + local", {"url": pg, "blobs": str(root / "c" / "blobs")}),
                         ("postgresql + s3", {"url": pg, "blobs": f"{s3}-pg"})]
        rows = []
        for label, where in backends:
            name = label.replace(" + ", "-").replace("postgresql", "pg")  # one name per backend: PG is shared
            registry = Registry(**where)
            counter = iter(range(len(payloads)))

            def register(registry: Registry = registry, name: str = name, counter: Iterator[int] = counter) -> None:
                registry.register(name, payloads[next(counter)], base_fingerprint="fp", template_hash="th",
                                  method="sft")

            register()  # warm: connections, the filesystem instance
            registry.tag(f"{name}@1", "prod")
            results = {
                "register": timed(register, args.registers),
                "resolve": timed(lambda r=registry, n=name: r.resolve(f"{n}:prod"), args.resolves),
                "load": timed(lambda r=registry, n=name: r.load_adapter(f"{n}:prod"), args.loads),
                "open": timed(lambda w=where: Registry(**w), 10),
            }
            rows.append((label, results))
            registry.close()

        base = {op: statistics.median(ms) for op, ms in rows[0][1].items()}
        print(f"{'backend':20} {'op':9} {'median ms':>10} {'p90 ms':>8} {'x sqlite+local':>15}")
        for label, results in rows:
            for op, ms in results.items():
                median = statistics.median(ms)
                p90 = statistics.quantiles(ms, n=10)[-1] if len(ms) >= 10 else max(ms)
                print(f"{label:20} {op:9} {median:10.2f} {p90:8.2f} {median / base[op]:15.2f}")


if __name__ == "__main__":
    main()
