"""HTTP serving benchmark: the same streaming load through ``adapterhub serve`` and through the
Engine directly, side by side; the difference is the HTTP overhead (target <= 10%).

    .venv/bin/python bench/http_bench.py                     # 32 clients, 8 adapters, 64 tokens
    .venv/bin/python bench/http_bench.py --requests 32 --precision fp32
    .venv/bin/python bench/http_bench.py --router 2              # via --engine vllm vs one server

Load: ``--clients`` concurrent streaming clients, each sending requests one after another until
``--requests`` have been sent in all; request i uses adapter i % ``--adapters`` (r=16 on
q/k/v/o, random non-zero B), greedy, ``ignore_eos``, exactly ``--tokens`` tokens. The HTTP run
drives a real ``adapterhub serve`` subprocess on 127.0.0.1 with raw httpx SSE parsing (the
client shares the CPU, so its cost counts as overhead too); the engine run uses
``Engine.stream`` in-process with the same prompts, config and precision. Runs alternate
(HTTP, engine, HTTP, engine ...; the idle side sleeps), so a noisy neighbour on the shared CPU
hurts both alike; the report gives each pair and the medians.

Reported per run: tokens/s (completion tokens / wall time), time to first token p50/p95 (send to
first token) and per-token latency p50/p95 (gaps between a stream's tokens).

With ``--router N`` the comparison is instead ``adapterhub serve --engine vllm`` over N local
``adapterhub serve`` replicas against one ``adapterhub serve`` alone, both through HTTP with the
same client: the routing overhead on tokens/s (target <= 5 %) and on p50 time to first token
(target within 20 ms). Replicas on one machine share its CPUs, so ``--router 1`` isolates what
the router itself costs; N > 1 shows what spreading adds or takes on this machine.

With ``--vllm PYTHON`` it is ``adapterhub serve --launch-vllm`` (vLLM run by ``PYTHON``, such as
``.venv-vllm/bin/python`` from ``make vllm``) against that same vLLM called directly under the
digest names the router loaded: what routing costs in front of real vLLM.

    .venv/bin/python bench/http_bench.py --vllm .venv-vllm/bin/python --clients 8 --requests 32

The base is the real default base, materialised once by the test suite into ``.tmp/test-home``
(override with ``ADAPTERHUB_TEST_CACHE``); a temporary hub home links to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cached_base import hub_on_cached_base
from header import auto_precision, print_header

QUESTIONS = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain gravity to a child.",
    "List three prime numbers.", "What is two plus two?", "Name a famous painter.",
    "Give me a tip for learning Python.", "Describe a cat in one sentence.",
]


@dataclass
class RunStats:
    """What one run measured."""

    label: str
    wall_s: float = 0.0
    tokens: int = 0
    ttft_s: list[float] = field(default_factory=list)
    gaps_s: list[float] = field(default_factory=list)
    errors: int = 0
    engine_side: dict[str, float] = field(default_factory=dict)  # HTTP runs: the server engine's own means

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# ---------------------------------------------------------------------------- setup


def make_home(root: Path, precision: str, adapters: int, rank: int) -> tuple[Path, list[str]]:
    """A temp hub home linking the cached default base, with ``adapters`` random adapters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    hub = hub_on_cached_base(root, precision)
    model = AutoModelForCausalLM.from_pretrained(hub.base_info.path, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    names = []
    for i in range(adapters):
        torch.manual_seed(i)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.02)
        folder = root / f"adapter{i}"
        peft_model.save_pretrained(folder, safe_serialization=True)
        names.append(hub.import_adapter(folder, f"bench{i}").ref)
    return hub.home, names


def engine_config(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_rows": args.clients, "max_slots": args.adapters, "max_lora_rank": args.rank}


# ---------------------------------------------------------------------------- HTTP run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, args: argparse.Namespace, log: Path, *extra: str,
                 env_extra: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ADAPTERHUB_LOG_LEVEL": "warning", **(env_extra or {})}
    env.update({f"ADAPTERHUB_ENGINE__{k.upper()}": str(v) for k, v in engine_config(args).items()})
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "adapterhub.cli", "serve", "--home", str(home), "--port", str(port), *extra],
            stdout=sink, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    sys.exit("server did not become ready")


def engine_summaries(url: str) -> dict[str, float]:
    """The server engine's own TTFT / per-token summaries (count and sum) from /metrics."""
    import httpx

    found = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        for name in ("time_to_first_token", "time_per_output_token"):
            for part in ("count", "sum"):
                key = f"adapterhub_engine_{name}_seconds_{part}"
                if line.startswith(key + " "):
                    found[f"{name}_{part}"] = float(line.split()[1])
    return found


async def http_run(url: str, refs: list[str], args: argparse.Namespace,
                   label: str = "HTTP (adapterhub serve)") -> RunStats:
    import httpx

    stats = RunStats(label)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.requests):
        queue.put_nowait(i)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        body = {"model": refs[i % len(refs)], "max_tokens": args.tokens, "temperature": 0, "ignore_eos": True,
                "stream": True, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]}
        sent = time.perf_counter()
        last = None
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
            if reply.status_code != 200:
                stats.errors += 1
                await reply.aread()
                return
            async for line in reply.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    stats.errors += 1
                    return
                if not event["choices"] or event["choices"][0]["delta"].get("role"):
                    continue
                now = time.perf_counter()
                if last is None:
                    stats.ttft_s.append(now - sent)
                else:
                    stats.gaps_s.append(now - last)
                last = now
        stats.tokens += args.tokens

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            await one(client, queue.get_nowait())

    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(*(one(client, i) for i in range(len(refs))))  # warm: every adapter in a slot
        stats.tokens, stats.ttft_s, stats.gaps_s = 0, [], []
        before = engine_summaries(url)
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(args.clients)))
        stats.wall_s = time.perf_counter() - started
        after = engine_summaries(url)
        for name in ("time_to_first_token", "time_per_output_token"):
            if f"{name}_count" not in after:
                continue  # a router has no engine of its own
            count = after[f"{name}_count"] - before[f"{name}_count"]
            stats.engine_side[name] = (after[f"{name}_sum"] - before[f"{name}_sum"]) / max(count, 1)
    return stats


# ---------------------------------------------------------------------------- engine run


async def engine_run(engine: Any, prompts: list[list[int]], refs: list[str], args: argparse.Namespace) -> RunStats:
    from adapterhub.engine import GenerationRequest, SamplingParams

    stats = RunStats("Engine.stream (in-process)")
    sampling = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.requests):
        queue.put_nowait(i)

    async def one(i: int, record: bool = True) -> None:
        request = GenerationRequest(tuple(prompts[i % len(prompts)]), adapter=refs[i % len(refs)],
                                    sampling=sampling)
        sent = time.perf_counter()
        last = None
        async with engine.stream(request) as stream:
            async for _chunk in stream:
                now = time.perf_counter()
                if record:
                    (stats.ttft_s if last is None else stats.gaps_s).append(now - (last or sent))
                last = now

    async def client_loop() -> None:
        while not queue.empty():
            await one(queue.get_nowait())

    await asyncio.gather(*(one(i, record=False) for i in range(len(refs))))  # warm
    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(args.clients)))
    stats.wall_s = time.perf_counter() - started
    stats.tokens = args.requests * args.tokens
    return stats


# ---------------------------------------------------------------------------- report


def merge(label: str, runs: list[RunStats]) -> RunStats:
    """Pooled latencies of several runs; throughput is the median run's."""
    merged = RunStats(label, errors=sum(r.errors for r in runs))
    merged.tokens = runs[0].tokens
    merged.wall_s = merged.tokens / statistics.median(r.tokens_per_s for r in runs)
    for r in runs:
        merged.ttft_s += r.ttft_s
        merged.gaps_s += r.gaps_s
    return merged


def row(r: RunStats) -> str:
    return (f"{r.label:34} {r.tokens_per_s:8.1f} {pct(r.ttft_s, 50) * 1e3:7.0f}ms {pct(r.ttft_s, 95) * 1e3:7.0f}ms "
            f"{pct(r.gaps_s, 50) * 1e3:6.1f}ms {pct(r.gaps_s, 95) * 1e3:6.1f}ms {r.errors:6d}")


def report(http_runs: list[RunStats], engine_runs: list[RunStats], args: argparse.Namespace) -> None:
    print(f"\n{args.clients} concurrent streams, {args.adapters} adapters (r={args.rank}), {args.tokens} tokens "
          f"each, {args.requests} requests per run, base {args.precision}, {os.cpu_count()} CPUs, "
          f"load average before {os.getloadavg()[0]:.1f}")
    head = f"{'run':34} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9} {'tok p50':>8} {'tok p95':>8} {'errors':>6}"
    print(head)
    print("-" * len(head))
    for i, (h, e) in enumerate(zip(http_runs, engine_runs, strict=True)):
        print(row(RunStats(f"#{i + 1} {h.label}", h.wall_s, h.tokens, h.ttft_s, h.gaps_s, h.errors)))
        print(row(RunStats(f"#{i + 1} {e.label}", e.wall_s, e.tokens, e.ttft_s, e.gaps_s, e.errors)))
    http, direct = merge("median HTTP", http_runs), merge("median engine", engine_runs)
    print(row(http))
    print(row(direct))
    for i, h in enumerate(http_runs):
        side = h.engine_side
        print(f"#{i + 1} HTTP: mean per-token latency seen by the client "
              f"{statistics.mean(h.gaps_s) * 1e3:.1f}ms vs inside the server's engine "
              f"{side['time_per_output_token'] * 1e3:.1f}ms; mean TTFT {statistics.mean(h.ttft_s) * 1e3:.0f}ms "
              f"vs {side['time_to_first_token'] * 1e3:.0f}ms")
    ratios = [h.tokens_per_s / e.tokens_per_s for h, e in zip(http_runs, engine_runs, strict=True)]
    print(f"\nHTTP/engine throughput per pair: {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"median overhead {(1 - statistics.median(ratios)) * 100:.1f}% (target <= 10%); "
          f"per-token p50 {(pct(http.gaps_s, 50) - pct(direct.gaps_s, 50)) * 1e3:+.2f}ms, "
          f"TTFT p50 {(pct(http.ttft_s, 50) - pct(direct.ttft_s, 50)) * 1e3:+.0f}ms")


def report_router(routed: list[RunStats], direct: list[RunStats], args: argparse.Namespace,
                  what: str = "") -> None:
    what = what or f"router over {args.router} replica(s) vs one server"
    print(f"\n{args.clients} concurrent streams, {args.adapters} adapters (r={args.rank}), {args.tokens} tokens "
          f"each, {args.requests} requests per run, base {args.precision}, {what}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    head = f"{'run':34} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9} {'tok p50':>8} {'tok p95':>8} {'errors':>6}"
    print(head)
    print("-" * len(head))
    for i, (r, d) in enumerate(zip(routed, direct, strict=True)):
        print(row(RunStats(f"#{i + 1} {r.label}", r.wall_s, r.tokens, r.ttft_s, r.gaps_s, r.errors)))
        print(row(RunStats(f"#{i + 1} {d.label}", d.wall_s, d.tokens, d.ttft_s, d.gaps_s, d.errors)))
    via, alone = merge("median via router", routed), merge("median direct", direct)
    print(row(via))
    print(row(alone))
    ratios = [r.tokens_per_s / d.tokens_per_s for r, d in zip(routed, direct, strict=True)]
    print(f"\nrouter/direct throughput per pair: {', '.join(f'{x:.3f}' for x in ratios)}; "
          f"median overhead {(1 - statistics.median(ratios)) * 100:.1f}% (target <= 5%); "
          f"TTFT p50 {(pct(via.ttft_s, 50) - pct(alone.ttft_s, 50)) * 1e3:+.1f}ms (target within 20 ms)")


def router_main(args: argparse.Namespace, root: Path, home: Path, refs: list[str]) -> None:
    """``--router N``: the same load via ``--engine vllm`` over N replicas and direct, alternated."""
    processes = []
    try:
        direct = start_server(home, args, root / "direct.log")
        processes.append(direct[0])
        replicas = []
        for i in range(args.router):
            replica_home = hub_on_cached_base(root / f"replica{i}", args.precision).home
            replica = start_server(replica_home, args, root / f"replica{i}.log")
            processes.append(replica[0])
            replicas += ["--replica", replica[1]]
        env = {"ADAPTERHUB_REPLICA_MAX_LORAS": str(args.adapters), "ADAPTERHUB_REPLICA_MAX_LORA_RANK": str(args.rank)}
        router = start_server(home, args, root / "router.log", "--engine", "vllm", *replicas, env_extra=env)
        processes.append(router[0])
        routed: list[RunStats] = []
        alone: list[RunStats] = []
        for i in range(args.repeat):
            print(f"pair {i + 1}/{args.repeat}: via router...", flush=True)
            routed.append(asyncio.run(http_run(router[1], refs, args, f"via router ({args.router} replicas)")))
            print(f"pair {i + 1}/{args.repeat}: direct...", flush=True)
            alone.append(asyncio.run(http_run(direct[1], refs, args, "direct (one server)")))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(60)
    report_router(routed, alone, args)


def vllm_main(args: argparse.Namespace, root: Path, home: Path, refs: list[str]) -> None:
    """``--vllm PYTHON``: the same load via ``--launch-vllm`` and straight to that vLLM, alternated."""
    import httpx

    from adapterhub import Hub
    from adapterhub.registry.export import served_name

    hub = Hub(home)
    names = [served_name(hub.resolve(ref)) for ref in refs]  # what the router loads into vLLM
    env = {"ADAPTERHUB_REPLICA_MAX_LORAS": str(args.adapters), "ADAPTERHUB_REPLICA_MAX_LORA_RANK": str(args.rank),
           "ADAPTERHUB_VLLM_PYTHON": args.vllm, "ADAPTERHUB_LOG_LEVEL": "info",
           "ADAPTERHUB_VLLM_ARGS": f"--max-model-len 1024 --kv-cache-memory-bytes {1 << 30} --max-num-seqs {args.clients}"}
    process, url = start_server(home, args, root / "router.log", "--launch-vllm", env_extra=env)
    try:
        deadline = time.monotonic() + 900
        while True:
            replica = httpx.get(f"{url}/admin/replicas", timeout=10).json()["replicas"][0]
            if replica["healthy"]:
                break
            if process.poll() is not None or time.monotonic() > deadline or "exited" in (replica["last_error"] or ""):
                sys.exit(f"the launched vLLM did not come up: {replica['last_error']}\n"
                         + "".join(p.read_text()[-3000:] for p in (home / "logs").glob("vllm-*.log")))
            time.sleep(1)
        print(f"vLLM at {replica['url']} (base {replica['base_model']})", flush=True)
        routed: list[RunStats] = []
        direct: list[RunStats] = []
        for i in range(args.repeat):  # the router's run first: its warm-up loads every adapter
            print(f"pair {i + 1}/{args.repeat}: via router...", flush=True)
            routed.append(asyncio.run(http_run(url, refs, args, "via router (--launch-vllm)")))
            print(f"pair {i + 1}/{args.repeat}: vLLM direct...", flush=True)
            direct.append(asyncio.run(http_run(replica["url"], names, args, "vLLM direct")))
    finally:
        process.terminate()
        process.wait(120)
    report_router(routed, direct, args, "router in front of one vLLM vs that vLLM direct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=64, help="requests in all (default 2 per client)")
    parser.add_argument("--precision", default="auto", choices=["auto", "nf4", "int8", "bf16", "fp32"],
                        help="base storage (default: bf16 where the CPU has native bf16, else fp32)")
    parser.add_argument("--repeat", type=int, default=3, help="HTTP/engine pairs, alternated")
    parser.add_argument("--router", type=int, default=0, metavar="N",
                        help="compare adapterhub serve --engine vllm over N local replicas with one server")
    parser.add_argument("--vllm", metavar="PYTHON",
                        help="compare adapterhub serve --launch-vllm (vLLM run by PYTHON) with that vLLM direct")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    from adapterhub.core.hardware import detect_platform
    from adapterhub.engine.threads import single_threaded

    threads = torch.get_num_threads()
    single_threaded()  # as the server does: only the engine's decode thread runs multi-threaded
    platform = detect_platform()
    if args.precision == "auto":
        args.precision = auto_precision(platform)
    print_header("http_bench", platform, base=args.precision, compute=platform.compute_dtype, lora="float32")
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmp:
        root = Path(tmp)
        print("preparing a hub home with the cached default base and adapters...", flush=True)
        home, refs = make_home(root, args.precision, args.adapters, args.rank)
        if args.vllm:
            vllm_main(args, root, home, refs)
            return
        if args.router:
            router_main(args, root, home, refs)
            return
        from adapterhub import Hub
        from adapterhub.engine import Engine, EngineConfig

        hub = Hub(home)
        prompts = [hub.base.render_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
        process, url = start_server(home, args, root / "server.log")
        http_runs: list[RunStats] = []
        engine_runs: list[RunStats] = []
        try:  # alternate, so a noisy neighbour hurts both sides alike; the idle side sleeps
            with Engine(hub.base, hub.registry, EngineConfig(**engine_config(args), num_threads=threads)) as engine:
                for i in range(args.repeat):
                    print(f"pair {i + 1}/{args.repeat}: HTTP...", flush=True)
                    http_runs.append(asyncio.run(http_run(url, refs, args)))
                    print(f"pair {i + 1}/{args.repeat}: engine...", flush=True)
                    engine_runs.append(asyncio.run(engine_run(engine, prompts, refs, args)))
        finally:
            process.terminate()
            process.wait(60)
        report(http_runs, engine_runs, args)


if __name__ == "__main__":
    main()
