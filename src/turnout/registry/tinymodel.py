"""Random-weight HF model directories for tests, smoke checks and benchmarks.

No model hub is reachable at run time (DESIGN §6), so tests build their own models: a
``LlamaForCausalLM`` directory whose ``config.json`` carries exactly the catalog's fields, whose
``model.safetensors`` holds exactly :meth:`Architecture.expected_tensors`, and whose tokenizer
is a byte-level BPE trained offline on the small corpus below.

The output is a pure function of ``(arch_id, seed)``: the same pair gives the same bytes, so a
test can build "two versions" of one architecture by changing the seed.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from turnout.registry.architectures import Architecture, get_architecture

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BOS: Final = "<|endoftext|>"
IM_START: Final = "<|im_start|>"
IM_END: Final = "<|im_end|>"
SPECIAL_TOKENS: Final = (BOS, IM_START, IM_END)

CHAT_TEMPLATE: Final = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Small English corpus for the BPE trainer. Varied words matter more than length: each distinct
#: word adds merges, and the trainer needs enough of them to approach the vocabulary size.
CORPUS: Final = """\
A railway turnout is the switch that moves trains from one track to another without stopping
the line. Engineers inspect the points, the frog and the check rails every morning, because a
worn blade can derail a heavy freight car. Signals protect each junction; a dispatcher sets the
route, the interlocking locks it, and only then does the driver see a green aspect.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. How
vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. Waltz, bad nymph, for
quick jigs vex. Jackdaws love my big sphinx of quartz.
Language models predict the next token from the tokens before it. A tokenizer splits text into
pieces, a model turns those pieces into probabilities, and a sampler chooses one. Greedy
decoding always picks the most likely token; temperature and nucleus sampling trade accuracy
for variety. Serving many requests at once means batching them, so that one forward pass
computes a step for every active sequence and the hardware stays busy.
Weather today: cloudy in the morning, sunny afternoon, light breeze from the northwest, with
temperatures between twelve and nineteen degrees. Tomorrow brings rain, thunder and strong
gusts along the coast; farmers should harvest apples, pears, plums and cherries before Friday.
Numbers and dates help too: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14 1,000,000 on Monday,
Tuesday, Wednesday, Thursday, Friday, Saturday and Sunday in January, February, March, April,
May, June, July, August, September, October, November and December.
Hello! How are you? I am fine, thank you. Could you please explain why the sky is blue?
Sunlight scatters off molecules of air, and shorter wavelengths scatter more strongly, so blue
light reaches our eyes from every direction. Write a short poem about autumn leaves drifting
over a quiet river. Summarize the meeting notes, list three action items and assign owners.
Kitchen recipe: whisk two eggs with flour, sugar, butter and a pinch of salt; bake the batter
in a warm oven for twenty minutes, then cool it on a rack and serve with honey or jam.
Libraries lend books, journals, maps and music; historians study ancient empires, wars,
treaties, inventions and voyages; biologists classify birds, insects, mammals, reptiles,
fungi and bacteria; chemists measure acids, salts, metals, crystals and gases.
"""


def write_tiny_model(out_dir: Path, *, arch_id: str = "tiny-llama", seed: int = 0) -> Path:
    """Write a random-weight HF ``LlamaForCausalLM`` directory for ``arch_id``; return it."""
    arch = get_architecture(arch_id)
    if arch is None:
        raise ValueError(f"unknown architecture {arch_id!r}; see turnout.registry.architectures")
    if arch.model_type != "llama":
        raise ValueError(f"write_tiny_model builds llama models only, not {arch.model_type!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = int(arch.config["vocab_size"])
    tokenizer = _trained_tokenizer(vocab)
    ids = {tok: _token_id(tokenizer, tok) for tok in SPECIAL_TOKENS}
    config = _config(arch, ids)
    _write_json(out_dir / "config.json", config)
    _write_json(
        out_dir / "generation_config.json",
        {
            "bos_token_id": ids[BOS],
            "eos_token_id": [ids[IM_END], ids[BOS]],
            "pad_token_id": ids[BOS],
        },
    )
    _write_weights(out_dir / "model.safetensors", arch, seed)
    _save_tokenizer(tokenizer, out_dir)
    return out_dir


def _config(arch: Architecture, ids: dict[str, int]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": arch.serving.max_model_len,
        "mlp_bias": False,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "torch_dtype": "float32",
        "use_cache": True,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[IM_END],
        "pad_token_id": ids[BOS],
    }
    # The catalog's fields win: a version must carry exactly these values.
    config.update(arch.config)
    return config


def _write_weights(path: Path, arch: Architecture, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in sorted(arch.expected_tensors().items()):
        if len(shape) == 1:
            # Norm gains near 1, jittered by the seed so two seeds differ everywhere.
            tensors[name] = 1.0 + 0.05 * torch.randn(shape, generator=gen)
        elif name == "model.embed_tokens.weight":
            tensors[name] = torch.randn(shape, generator=gen)
        else:
            # Scaled by fan-in (and a bit above it) so the random network's logits are peaked
            # enough that greedy decoding wanders instead of repeating one token forever.
            std = 1.5 / float(shape[1]) ** 0.5
            tensors[name] = torch.randn(shape, generator=gen) * std
    save_file(tensors, str(path), metadata={"format": "pt"})


@lru_cache(maxsize=8)
def _trained_tokenizer(vocab_size: int) -> Tokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    # A few paragraphs give fewer merges than a large vocabulary needs; fill the rest with
    # reserved tokens so the tokenizer's size equals the architecture's vocab_size.
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_tokens([f"<|reserved_{i}|>" for i in range(missing)])
    return tok


def _save_tokenizer(tokenizer: Tokenizer, out_dir: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    # transformers' tokenizer constructors are untyped; call through Any for mypy --strict.
    factory: Any = PreTrainedTokenizerFast
    fast = factory(
        tokenizer_object=tokenizer.__class__.from_str(tokenizer.to_str()),
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=BOS,
        unk_token=None,
        additional_special_tokens=[IM_START],
        model_max_length=2**31 - 1,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    found = tokenizer.token_to_id(token)
    if found is None:
        raise RuntimeError(f"special token {token!r} missing from the trained tokenizer")
    return int(found)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
