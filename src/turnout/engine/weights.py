"""Another directory's weights for a running engine: checked, staged in CPU memory, copied in.

A swap keeps the serving model object (and so its device memory) and copies new values into
its parameters. The result is the model a fresh load of the new directory would give only if
everything but the weights is equal, so the new ``config.json`` must match the loaded one field
for field, except the fields that describe the file rather than the network and the special
token ids (the swap takes the new directory's end-of-sequence ids along with its tokenizer).

Everything that can fail on a bad directory (missing files, a different shape, a corrupt or
incomplete checkpoint) fails in :func:`load_candidate`, before the serving model is touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from turnout.engine.model import LoadedModel, eos_ids, weights_fingerprint

logger = logging.getLogger(__name__)

#: config.json keys that may differ between two versions of one network.
_NOT_SHAPE = frozenset(
    {
        "_name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    }
)


class WeightsRejected(Exception):
    """The directory cannot replace the loaded weights; nothing was changed."""


@dataclass(frozen=True, slots=True)
class Candidate:
    #: The new weights, in CPU memory, in the serving dtype.
    source: Any
    #: What the engine serves once they are copied in (same model object, new everything else).
    loaded: LoadedModel


def config_differences(loaded: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old != new`` for each config field that makes ``new`` another network."""
    keys = sorted((loaded.keys() | new.keys()) - _NOT_SHAPE)
    return [
        f"{k}: {loaded.get(k)!r} != {new.get(k)!r}" for k in keys if loaded.get(k) != new.get(k)
    ]


def load_candidate(model_dir: Path, current: LoadedModel) -> Candidate:
    """Load ``model_dir`` into CPU memory and check it fits ``current``; else WeightsRejected."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not model_dir.is_dir():
        raise WeightsRejected(f"model_path {model_dir} is not a directory")
    try:
        config = AutoConfig.from_pretrained(str(model_dir)).to_dict()
    except (OSError, ValueError) as exc:
        raise WeightsRejected(f"model_path {model_dir} has no readable config.json: {exc}") from exc
    differences = config_differences(current.config, config)
    if differences:
        raise WeightsRejected(
            f"model_path {model_dir} is not the loaded model's shape ({'; '.join(differences)}); "
            "serve it from a new engine process instead"
        )
    dtype = next(iter(current.model.parameters())).dtype
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        # output_loading_info makes it return (model, info); its stubs know only the model.
        source, info = cast(
            tuple[Any, dict[str, Any]],
            AutoModelForCausalLM.from_pretrained(
                str(model_dir), dtype=dtype, output_loading_info=True
            ),
        )
    except Exception as exc:  # safetensors, tokenizers and torch each raise their own types
        raise WeightsRejected(f"model_path {model_dir} could not be loaded: {exc}") from exc
    _check_complete(model_dir, info, source, current.model)
    loaded = replace(
        current,
        tokenizer=tokenizer,
        fingerprint=weights_fingerprint(model_dir),
        eos_token_ids=eos_ids(source, tokenizer),
        model_dir=model_dir,
        config=config,
    )
    return Candidate(source=source.eval(), loaded=loaded)


def copy_weights(target: Any, source: Any) -> None:
    """Copy every parameter and buffer of ``source`` into ``target``, in place."""
    target.load_state_dict(source.state_dict(), strict=True)


def _check_complete(model_dir: Path, info: dict[str, Any], source: Any, target: Any) -> None:
    # from_pretrained fills tensors missing from the checkpoint with random values and only
    # warns: serving those would be silently wrong.
    missing = list(info.get("missing_keys") or ())
    mismatched = list(info.get("mismatched_keys") or ())
    if missing or mismatched:
        names = ", ".join(str(k) for k in [*missing, *mismatched][:5])
        raise WeightsRejected(f"model_path {model_dir} lacks or misshapes tensors: {names}")
    ours = {k: tuple(v.shape) for k, v in target.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in source.state_dict().items()}
    if ours != theirs:
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        raise WeightsRejected(f"model_path {model_dir} has other tensors: {', '.join(differ[:5])}")
