"""The text layer: UTF-8-safe incremental detokenisation and stop strings (no model needed)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lmforge.inference.text import IncrementalDetokenizer, StopStrings


class ByteTokenizer:
    """Token id i is the single byte i: the worst case for splitting UTF-8 characters."""

    def decode_bytes(self, ids: list[int]) -> bytes:
        return bytes(ids)


def test_multibyte_characters_are_never_split():
    text = "héllo 🌍 — ok"
    detok = IncrementalDetokenizer(ByteTokenizer())
    pieces = [detok.push([b]) for b in text.encode("utf-8")] + [detok.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert pieces[1:3] == ["", "é"]  # "é" is 0xC3 0xA9: nothing after the first byte, all after the second


@given(st.binary(max_size=60), st.lists(st.integers(1, 5), max_size=30))
def test_incremental_decoding_equals_decoding_everything(data, chunk_sizes):
    detok = IncrementalDetokenizer(ByteTokenizer())
    pieces, start = [], 0
    for size in chunk_sizes:
        pieces.append(detok.push(list(data[start : start + size])))
        start += size
    pieces += [detok.push(list(data[start:])), detok.flush()]
    assert "".join(pieces) == data.decode("utf-8", errors="replace")


def test_stop_string_is_held_back_then_cut():
    stops = StopStrings(["\n\n"])
    assert stops.push("a\n") == ("a", False)  # "\n" may start "\n\n": held back
    assert stops.push("b") == ("\nb", False)  # it did not
    assert stops.push("\n\nc") == ("", True)  # stop string not shown, nor what follows
    assert stops.push("more") == ("", True)


@given(
    st.text(alphabet="ab\n", max_size=40),
    st.lists(st.text(alphabet="ab\n", min_size=1, max_size=3), min_size=1, max_size=3),
    st.lists(st.integers(1, 4), max_size=20),
)
def test_streamed_output_is_text_before_first_stop(text, stop, chunk_sizes):
    stops = StopStrings(stop)
    out, start, stopped = [], 0, False
    for size in [*chunk_sizes, len(text)]:
        piece, stopped = stops.push(text[start : start + size])
        out.append(piece)
        start += size
    if not stopped:
        out.append(stops.flush())
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    assert "".join(out) == (text[: min(cuts)] if cuts else text)
    assert stops.stopped == bool(cuts)
