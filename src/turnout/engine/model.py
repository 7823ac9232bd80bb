"""Loading an HF-format model directory into what the engine serves."""

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


def load_model(
    model_dir: Path, *, device: str = "cpu", max_model_len: int | None = None
) -> LoadedModel:
    """Load weights and tokenizer; raises ``OSError``/``ValueError`` for a bad directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.chat_template is None:
        logger.warning("%s has no chat template; /v1/chat/completions will be refused", model_dir)
    dtype = torch.float32 if device == "cpu" else "auto"
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    model.to(device).eval()
    config_len = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    limit = min(x for x in (config_len, max_model_len) if x) if (config_len or max_model_len) else 0
    if limit <= 0:
        raise ValueError(f"{model_dir}: no max_position_embeddings; pass --max-model-len")
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        fingerprint=_fingerprint(model_dir),
        max_model_len=limit,
        eos_token_ids=_eos_ids(model, tokenizer),
    )


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
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


def _fingerprint(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin")):
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return "fp_" + digest.hexdigest()[:10]
