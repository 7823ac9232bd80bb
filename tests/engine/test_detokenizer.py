"""Incremental detokenization and stop strings, on a character-level fake tokenizer."""

from __future__ import annotations

from turnout.engine.detokenizer import Detokenizer


class CharTokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def _feed(detok: Detokenizer, text: str) -> list[str]:
    out = []
    for ch in text:
        out.append(detok.push(ord(ch)))
        if detok.stopped:
            break
    out.append(detok.flush())
    return out


def test_no_stop_sends_every_token() -> None:
    assert _feed(Detokenizer(CharTokenizer()), "abc") == ["a", "b", "c", ""]


def test_stop_string_trimmed_and_prefix_held_back() -> None:
    detok = Detokenizer(CharTokenizer(), ("END",))
    pieces = _feed(detok, "abEXENDzz")
    assert "".join(pieces) == "abEX"
    assert detok.stopped and detok.text == "abEX"
    # "E" was held until "X" showed it was not the start of "END".
    assert pieces[:4] == ["a", "b", "", "EX"]


def test_held_back_prefix_flushed_at_end() -> None:
    detok = Detokenizer(CharTokenizer(), ("END",))
    assert "".join(_feed(detok, "abEN")) == "abEN"
    assert not detok.stopped


def test_partial_character_waits() -> None:
    class Partial(CharTokenizer):
        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            text = super().decode(ids)
            return text.replace("#", "\ufffd")

    detok = Detokenizer(Partial())
    assert detok.push(ord("a")) == "a"
    assert detok.push(ord("#")) == ""
    assert detok.push(ord("b")) == "\ufffdb"
