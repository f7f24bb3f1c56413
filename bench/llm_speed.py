"""LLM time to first token and tokens/s on this machine: local llama.cpp and llama_cpp.server.

Ten caller questions about the demo shop, each with the three demo-FAQ answers that share most
words with it as passages, go through `llm.build_prompt` (the prompt a real turn sends). Each
backend answers all ten (greedy, the phone stop sequences, max 60 tokens); the first prompt of a
backend is reported apart as "cold" (its few-shot prefix is not in the KV cache yet). Prints p50
TTFT, p50 decode tokens/s (pieces after the first per second; one piece is one token on both
backends), and how many answers passed the groundedness check.

    .venv/bin/python bench/llm_speed.py [--threads 2] [--max-tokens 60] [--backends local,openai]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from llm import STOP, LLMBackend, build_prompt, bundled_gemma, check, make_backend

FAQ = Path(__file__).resolve().parents[1] / "voicebot" / "demo" / "faq.csv"
QUESTIONS = [
    "how long does delivery take",
    "how much is shipping",
    "can i still cancel the order i placed this morning",
    "what do i do if my parcel came damaged",
    "is there a minimum amount i have to order",
    "can i pay with pay pal",
    "how do i return something",
    "when will i get my refund",
    "do you ship abroad",
    "how can i change my delivery address",
]


@dataclass
class Run:
    ttft_s: float
    tokens: int
    decode_tps: float
    text: str
    grounded: bool


def passages_for(question: str, answers: list[str], k: int = 3) -> list[str]:
    """The k FAQ answers sharing most words with the question (a stand-in for retrieval)."""
    words = set(re.findall(r"[a-z]+", question.lower()))
    return sorted(answers, key=lambda a: -len(words & set(re.findall(r"[a-z]+", a.lower()))))[:k]


async def one(backend: LLMBackend, prompt: str, passages: list[str], max_tokens: int) -> Run:
    start = time.perf_counter()
    stamps: list[float] = []
    pieces: list[str] = []
    async for piece in backend.stream(prompt, max_tokens=max_tokens, stop=STOP):
        stamps.append(time.perf_counter())
        pieces.append(piece)
    if not stamps:
        return Run(float("nan"), 0, float("nan"), "", False)
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    text = "".join(pieces).strip()
    return Run(stamps[0] - start, len(stamps), decode, text, check(text, passages).ok)


async def bench(backend: LLMBackend, prompts: list[tuple[str, list[str]]], max_tokens: int) -> list[Run]:
    runs = []
    for prompt, passages in prompts:
        runs.append(await one(backend, prompt, passages, max_tokens))
    await backend.aclose()
    return runs


def report(name: str, runs: list[Run], verbose: bool) -> None:
    cold, warm = runs[0], runs[1:]
    ttft = statistics.median(r.ttft_s for r in warm) * 1000
    tps = statistics.median(r.decode_tps for r in warm if r.tokens > 1)
    tokens = statistics.median(r.tokens for r in warm)
    grounded = sum(r.grounded for r in runs)
    print(
        f"{name:7} TTFT p50 {ttft:6.0f} ms (cold {cold.ttft_s * 1000:.0f} ms)  decode p50 {tps:5.1f} tok/s"
        f"  answer p50 {tokens:.0f} tokens  grounded {grounded}/{len(runs)}"
    )
    if verbose:
        for r in runs:
            verdict = "ok" if r.grounded else "no"
            print(f"    {r.ttft_s * 1000:5.0f} ms {r.tokens:3d} tok {verdict} {r.text!r}")


def start_server(gguf: Path, threads: int) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--n_ctx", "2048"]
    if threads:
        cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2):
                return proc, base_url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("llama_cpp.server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=60)
    parser.add_argument("--backends", default="local,openai")
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "voicebot-models")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every answer")
    args = parser.parse_args()

    with FAQ.open(newline="") as f:
        answers = [row["answer"] for row in csv.DictReader(f)]
    prompts = []
    for question in QUESTIONS:
        passages = passages_for(question, answers)
        prompts.append((build_prompt(question, passages, [], {}), passages))
    gguf = bundled_gemma(args.models_dir)
    print(f"model {gguf.name}, {len(prompts)} prompts, threads {args.threads}, load {os.getloadavg()[0]:.1f}")

    if "local" in args.backends:
        start = time.perf_counter()
        local = make_backend("local", model_path=gguf, threads=args.threads)
        print(f"local   load {time.perf_counter() - start:.2f} s")
        report("local", asyncio.run(bench(local, prompts, args.max_tokens)), args.verbose)
    if "openai" in args.backends:
        proc, base_url = start_server(gguf, args.threads)
        try:
            remote = make_backend("openai", base_url=base_url)
            report("openai", asyncio.run(bench(remote, prompts, args.max_tokens)), args.verbose)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
