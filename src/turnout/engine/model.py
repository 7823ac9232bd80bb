"""Loading an HF-format model directory into what the engine serves.

The dtype follows the device: float32 on the CPU (its bf16 matmuls are slow and lossy),
bfloat16 on a CUDA device that supports it, else float16. The model's device is the one source
every later tensor construction reads (``model.device``).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    model: Any
    tokenizer: Any
    #: ``fp_`` + first 10 hex digits of the sha256 of the weight files (DESIGN §4).
    fingerprint: str
    max_model_len: int
    eos_token_ids: frozenset[int]
    #: Where the weights came from; ``model_path`` in ``/get_model_info``.
    model_dir: Path
    #: ``config.json`` as read from ``model_dir``, before loading touched it: what a weight
    #: swap compares the new directory's config with.
    config: dict[str, Any]


def serving_dtype(device: str, *, bf16_supported: bool) -> Any:
    """The dtype to serve in on ``device`` (a ``torch.dtype``)."""
    import torch

    if torch.device(device).type == "cpu":
        return torch.float32
    return torch.bfloat16 if bf16_supported else torch.float16


def bf16_supported(device: str) -> bool:
    import torch

    return torch.device(device).type == "cuda" and bool(torch.cuda.is_bf16_supported())


def load_model(
    model_dir: Path, *, device: str = "cpu", max_model_len: int | None = None
) -> LoadedModel:
    """Load weights and tokenizer; raises ``OSError``/``ValueError`` for a bad directory."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.chat_template is None:
        logger.warning("%s has no chat template; /v1/chat/completions will be refused", model_dir)
    config = AutoConfig.from_pretrained(str(model_dir)).to_dict()
    dtype = serving_dtype(device, bf16_supported=bf16_supported(device))
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    model.to(device).eval()
    config_len = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    limit = min(x for x in (config_len, max_model_len) if x) if (config_len or max_model_len) else 0
    if limit <= 0:
        raise ValueError(f"{model_dir}: no max_position_embeddings; pass --max-model-len")
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        fingerprint=weights_fingerprint(model_dir),
        max_model_len=limit,
        eos_token_ids=eos_ids(model, tokenizer),
        model_dir=model_dir,
        config=config,
    )


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (model.generation_config, model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def weights_fingerprint(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin")):
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return "fp_" + digest.hexdigest()[:10]
