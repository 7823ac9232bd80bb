"""The architecture catalog: the shape contract every model version must meet.

An architecture names the HF ``config.json`` fields a version must match exactly and the
serving defaults of its endpoints. The tensor shapes a version's safetensors must carry are
derived from those fields (see :meth:`Architecture.expected_tensors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

ConfigValue = int | float | str | bool


@dataclass(frozen=True, slots=True)
class ServingDefaults:
    engine: str = "builtin"
    replicas: int = 1
    max_model_len: int = 2048
    dtype: str = "auto"
    #: GPUs one replica needs (its tensor-parallel size); 0 for the CPU-sized shapes.
    gpus_per_replica: int = 0


@dataclass(frozen=True, slots=True)
class Architecture:
    arch_id: str
    description: str
    #: Fields of config.json that a version must carry with exactly these values.
    config: MappingProxyType[str, ConfigValue]
    serving: ServingDefaults = field(default_factory=ServingDefaults)

    @property
    def model_type(self) -> str:
        return str(self.config["model_type"])

    def _int(self, name: str) -> int:
        return int(self.config[name])

    @property
    def head_dim(self) -> int:
        if "head_dim" in self.config:
            return self._int("head_dim")
        return self._int("hidden_size") // self._int("num_attention_heads")

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        """Every tensor name a checkpoint of this architecture holds, with its shape."""
        hidden = self._int("hidden_size")
        inter = self._int("intermediate_size")
        vocab = self._int("vocab_size")
        q_out = self._int("num_attention_heads") * self.head_dim
        kv_out = self._int("num_key_value_heads") * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (vocab, hidden),
            "model.norm.weight": (hidden,),
        }
        if not self.config.get("tie_word_embeddings", False):
            shapes["lm_head.weight"] = (vocab, hidden)
        for i in range(self._int("num_hidden_layers")):
            p = f"model.layers.{i}."
            shapes[p + "self_attn.q_proj.weight"] = (q_out, hidden)
            shapes[p + "self_attn.k_proj.weight"] = (kv_out, hidden)
            shapes[p + "self_attn.v_proj.weight"] = (kv_out, hidden)
            shapes[p + "self_attn.o_proj.weight"] = (hidden, q_out)
            shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
            shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
            shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
            shapes[p + "input_layernorm.weight"] = (hidden,)
            shapes[p + "post_attention_layernorm.weight"] = (hidden,)
            if self.model_type == "qwen3":
                shapes[p + "self_attn.q_norm.weight"] = (self.head_dim,)
                shapes[p + "self_attn.k_norm.weight"] = (self.head_dim,)
        return shapes


#: Weight dtypes a version may be stored in (safetensors header names).
ALLOWED_DTYPES: Final = frozenset({"F32", "F16", "BF16"})


def _arch(
    arch_id: str, description: str, serving: ServingDefaults, **config: ConfigValue
) -> Architecture:
    return Architecture(arch_id, description, MappingProxyType(dict(config)), serving)


BUILTIN_ARCHITECTURES: Final[tuple[Architecture, ...]] = (
    _arch(
        "tiny-llama",
        "A ~1M-parameter Llama shape for tests and smoke checks (`turnout dev tiny-model`).",
        ServingDefaults(max_model_len=512),
        model_type="llama",
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    ),
    _arch(
        "smollm2-135m",
        "SmolLM2-135M (Llama shape), the demo model.",
        ServingDefaults(max_model_len=2048),
        model_type="llama",
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    _arch(
        "llama3.1-8b",
        "Meta Llama 3.1 8B.",
        ServingDefaults(engine="vllm", max_model_len=8192, dtype="bfloat16", gpus_per_replica=1),
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    ),
    _arch(
        "llama-3.3-70b",
        "Meta Llama 3.3 70B.",
        ServingDefaults(engine="vllm", max_model_len=8192, dtype="bfloat16", gpus_per_replica=4),
        model_type="llama",
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    ),
    _arch(
        "qwen-3-32b",
        "Qwen3 32B.",
        ServingDefaults(engine="vllm", max_model_len=8192, dtype="bfloat16", gpus_per_replica=2),
        model_type="qwen3",
        hidden_size=5120,
        intermediate_size=25600,
        num_hidden_layers=64,
        num_attention_heads=64,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=False,
    ),
)

_BY_ID: Final = {a.arch_id: a for a in BUILTIN_ARCHITECTURES}


def get_architecture(arch_id: str) -> Architecture | None:
    return _BY_ID.get(arch_id)


def gpus_per_replica(arch_id: str, override: int | None) -> int:
    """An endpoint's GPUs per replica: its own setting, else its architecture's default."""
    if override is not None:
        return override
    arch = get_architecture(arch_id)
    return arch.serving.gpus_per_replica if arch else 0
