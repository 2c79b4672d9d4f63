"""Dialogue context for text encoders: the previous turns of a conversation, joined before the current one.

`build_context(rows, k)` gives, for each manifest row, the text a text encoder reads:

- acted rows (`dialogue_id` null), and every row when k = 0: the row's `text`, unchanged;
- conversational rows: the previous k turns of the same dialogue (same `dataset` and `dialogue_id`, strictly
  smaller `turn`, in turn order), each as `"<speaker>: <text>"`, joined with `sep`, then `sep` and the current
  turn's text (without a speaker prefix, so that the current text is the same as without context).

The speaker is the manifest's `speaker` without its `<DATASET>/` prefix. Previous turns with an empty
transcript are left out (they still count towards k); a conversational row without a `turn` gets no context and
is nobody's context. Context is taken from every row passed in, whatever its split.

`truncate_left(tokenizer, texts, max_length, current)` tokenises such texts so that, when too long, the OLDEST
context is cut and the current turn is kept whole.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence

DEFAULT_SEP = " </s> "


def _turn(value) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def speaker_name(row: dict) -> str:
    """The speaker as shown in context: `speaker` without its `<DATASET>/` prefix ("unknown" when absent)."""
    spk = row.get("speaker")
    if not spk:
        return "unknown"
    spk = str(spk)
    prefix = f"{row.get('dataset')}/"
    return spk[len(prefix):] if spk.startswith(prefix) and len(spk) > len(prefix) else spk


def context_parts(rows: Sequence[dict], k: int, sep: str = DEFAULT_SEP) -> list[tuple[str, str]]:
    """Per row, `(context, current)`: the joined previous turns ("" when none) and the row's own text."""
    if k < 0:
        raise ValueError(f"context size k must be >= 0, got {k}")
    current = [str(r.get("text") or "") for r in rows]
    contexts = [""] * len(rows)
    if k == 0:
        return list(zip(contexts, current, strict=True))
    dialogues: dict[tuple, list[tuple[int, int]]] = defaultdict(list)  # (dataset, dialogue) -> [(turn, row)]
    for i, r in enumerate(rows):
        turn = _turn(r.get("turn"))
        if r.get("dialogue_id") is not None and turn is not None:
            dialogues[(r.get("dataset"), r["dialogue_id"])].append((turn, i))
    for members in dialogues.values():
        members.sort()
        turns = [t for t, _ in members]
        for turn, i in members:
            start = bisect_left(turns, turn)  # first member with this turn: everything before is earlier
            prev = members[max(0, start - k) : start]
            parts = [f"{speaker_name(rows[j])}: {current[j]}" for _, j in prev if current[j].strip()]
            contexts[i] = sep.join(parts)
    return list(zip(contexts, current, strict=True))


def build_context(rows: Sequence[dict], k: int, sep: str = DEFAULT_SEP) -> list[str]:
    """The text to encode for each row: `"<spk>: <t-k> <sep> ... <spk>: <t-1> <sep> <current>"` (see module doc)."""
    return [f"{ctx}{sep}{cur}" if ctx else cur for ctx, cur in context_parts(rows, k, sep)]


def _tokens(tokenizer, texts: list[str], max_length: int, side: str, offsets: bool) -> dict:
    previous = tokenizer.truncation_side
    tokenizer.truncation_side = side
    try:
        return tokenizer(texts, truncation=True, max_length=max_length, return_offsets_mapping=offsets)
    finally:
        tokenizer.truncation_side = previous


def truncate_left(
    tokenizer, texts: Sequence[str], max_length: int, current: Sequence[str] | None = None
) -> list[list[int]]:
    """Token ids (special tokens included) of each text, at most `max_length` long, cut from the LEFT.

    With `current` (the current turn of each text, a suffix of it, as `context_parts` gives), a text whose
    current turn would itself be cut is encoded from the current turn alone, truncated on the right as it
    would be without context: the context is dropped before any of the current turn is.
    """
    texts = [str(t) for t in texts]
    if current is not None and len(current) != len(texts):
        raise ValueError(f"current has {len(current)} entries for {len(texts)} texts")
    if not texts:
        return []
    if current is None:
        return [list(x) for x in _tokens(tokenizer, texts, max_length, "left", False)["input_ids"]]
    for t, c in zip(texts, current, strict=True):
        if not t.endswith(c):
            raise ValueError(f"current turn {c[:40]!r} is not the end of its text {t[-40:]!r}")
    enc = _tokens(tokenizer, texts, max_length, "left", True)
    ids = [list(x) for x in enc["input_ids"]]
    redo = []
    for i, (t, c) in enumerate(zip(texts, current, strict=True)):
        start = len(t) - len(c)  # where the current turn begins in the text
        spans = [(a, b) for a, b in enc["offset_mapping"][i] if b > a]  # content tokens (not special ones)
        if c.strip() and (not spans or spans[0][0] > start):
            redo.append(i)  # the first kept token begins inside the current turn: it was cut
    if redo:
        alone = _tokens(tokenizer, [current[i] for i in redo], max_length, "right", False)["input_ids"]
        for i, x in zip(redo, alone, strict=True):
            ids[i] = list(x)
    return ids
