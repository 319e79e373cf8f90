"""Load test of `mamba-deploy serve`: N concurrent streaming clients; throughput, time to first token and
inter-token latency (p50/p99) per concurrency, as a markdown table.

    PYTHONPATH=. python benchmarks/bench_serve.py                                   # demo model, onnxruntime, CPU
    PYTHONPATH=. python benchmarks/bench_serve.py --random-init mamba-1.4b --backend native   # GPU
    PYTHONPATH=. python benchmarks/bench_serve.py --url http://127.0.0.1:8000       # a server already running

Starts the server itself (`--port 0` on 127.0.0.1; exports examples/models/mamba-tiny-pydoc to a temp folder
unless --export names an export) and stops it at the end, unless --url names one (loopback only). Every
client sends --requests-per-client streaming /v1/completions requests one after another: a random token-id
prompt of --prompt-len ids (< 1000, valid for every model), seeded sampling (T=0.7, top-p 0.9), --max-tokens
with `ignore_eos`, so each request generates exactly that many tokens. Per concurrency: generated tokens /
wall time (all clients), TTFT (request sent -> first piece) and the gaps between pieces (ITL; a piece is one
token for token-id output, usually one for text). A level stops starting requests after --time-limit seconds.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import queue
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group()
    source.add_argument("--export", type=Path, default=None, help="an export folder (default: the demo model)")
    source.add_argument("--random-init", default=None, help="serve random weights of this preset (native, GPU)")
    source.add_argument("--url", default=None, help="a running server on this machine (loopback only)")
    p.add_argument("--backend", default=None,
                   help="backend of the server started here (default: native for --random-init, else onnxruntime)")
    p.add_argument("--concurrency", default="1,16,64", help="comma-separated client counts")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per level before no new requests start")
    p.add_argument("--api-key", default=None)
    return p.parse_args()


class Server:
    """`mamba-deploy serve` in a subprocess on a free loopback port."""

    def __init__(self, args: argparse.Namespace, source: list[str], slots: int):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "mamba_deploy.cli", "serve", *source, "--host", "127.0.0.1", "--port", "0",
                   "--backend", args.backend or ("native" if args.random_init else "onnxruntime"), "--max-batch", str(slots), "--max-queue", str(slots),
                   "--max-tokens-limit", str(max(args.max_tokens, 16))]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        try:
            first = lines.get(timeout=600)
        except queue.Empty:
            first = ""
        match = re.search(r"on (http://127\.0\.0\.1:\d+)$", first.strip())
        if match is None:
            self.stop()
            raise SystemExit(f"the server did not start: {first!r}")
        self.url, self.banner = match.group(1), first.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def one_request(client, body: dict) -> tuple[float, list[float], int]:
    """-> (TTFT s, gaps between pieces s, completion tokens) of one streaming completion."""
    start = time.perf_counter()
    times, tokens = [], 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            choice = chunk["choices"][0] if chunk["choices"] else {}
            if choice.get("text") or choice.get("token_ids"):
                times.append(time.perf_counter())
    gaps = [b - a for a, b in zip(times, times[1:])]
    return (times[0] - start if times else math.nan), gaps, tokens


async def run_level(url: str, args: argparse.Namespace, clients: int, headers: dict) -> dict:
    import httpx

    rng = random.Random(clients)
    deadline = time.perf_counter() + args.time_limit
    ttfts, gaps, tokens, requests = [], [], 0, 0

    async def client_loop(index: int, client) -> None:
        nonlocal tokens, requests
        for round_ in range(args.requests_per_client):
            if time.perf_counter() > deadline:
                return
            body = {"prompt": [rng.randrange(1, 1000) for _ in range(args.prompt_len)], "max_tokens": args.max_tokens,
                    "temperature": 0.7, "top_p": 0.9, "seed": 1000 * index + round_, "stream": True,
                    "ignore_eos": True, "stream_options": {"include_usage": True}}
            ttft, request_gaps, request_tokens = await one_request(client, body)
            ttfts.append(ttft)
            gaps.extend(request_gaps)
            tokens += request_tokens
            requests += 1

    limits = httpx.Limits(max_connections=clients + 4)
    timeout = httpx.Timeout(args.time_limit + 60)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout) as client:
        await one_request(client, {"prompt": [1, 2, 3], "max_tokens": 4, "stream": True})  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(i, client) for i in range(clients)))
        wall = time.perf_counter() - start
    return {"clients": clients, "requests": requests, "tokens": tokens, "wall_s": wall, "tok_s": tokens / wall,
            "ttft_p50": pct(ttfts, 50), "ttft_p99": pct(ttfts, 99), "itl_p50": pct(gaps, 50), "itl_p99": pct(gaps, 99)}


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (nan for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def table(rows: list[dict]) -> str:
    lines = ["| clients | requests | tokens | wall s | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['clients']} | {r['requests']} | {r['tokens']} | {r['wall_s']:.2f} | {r['tok_s']:,.0f} | "
                     f"{r['ttft_p50'] * 1e3:.1f} | {r['ttft_p99'] * 1e3:.1f} | {r['itl_p50'] * 1e3:.2f} | "
                     f"{r['itl_p99'] * 1e3:.2f} |")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if min(levels) < 1 or min(args.requests_per_client, args.prompt_len, args.max_tokens) < 1:
        raise SystemExit("--concurrency, --requests-per-client, --prompt-len and --max-tokens must be positive")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    server, tmp = None, None
    try:
        if args.url is not None:
            if urlparse(args.url).hostname not in LOOPBACK:
                raise SystemExit("--url must be a loopback address (127.0.0.1, localhost, ::1)")
            url, banner = args.url.rstrip("/"), f"server at {args.url}"
        else:
            if args.random_init:
                source = ["--random-init", args.random_init]
            elif args.export:
                source = [str(args.export)]
            else:
                tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
                from mamba_deploy.export import ExportOptions, export_model

                out = Path(tmp.name) / "mamba-tiny-pydoc"
                export_model(str(ROOT / "examples/models/mamba-tiny-pydoc"), str(out), ExportOptions(), progress=False)
                source = [str(out)]
            server = Server(args, source, max(levels))
            url, banner = server.url, server.banner
        rows = [asyncio.run(run_level(url, args, clients, headers)) for clients in levels]
    finally:
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()
    print(f"{banner}; {args.requests_per_client} streaming requests per client, prompt {args.prompt_len} ids, "
          f"{args.max_tokens} tokens each (ignore_eos), T=0.7 top-p 0.9\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
