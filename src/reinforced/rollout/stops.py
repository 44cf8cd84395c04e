"""Stop strings: incremental detokenization per row, and cutting the final text.

A stop string can end in the middle of a token and byte-level tokens can end in the middle of a UTF-8
character, so each row keeps its token ids and decodes only a short window: the tokens since the last
fully decoded point (``prefix``) against the already-emitted ones (``read``). New text is emitted only when
it does not end in the replacement character of an incomplete byte sequence. Only the last
``len(stop) - 1`` characters of old text plus the new text are searched, so each step is O(window).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` cut right after the earliest-ending stop string (unchanged when none occurs).

    >>> cut_at_stop("<answer>4</answer> more", ["</answer>"])
    '<answer>4</answer>'
    >>> cut_at_stop("abc", ["x"])
    'abc'
    """
    ends = [text.find(s) + len(s) for s in stops if s in text]
    return text[: min(ends)] if ends else text


class StopStrings:
    """Per-row stop-string detector fed one token per row per step."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], num_rows: int) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.max_len = max(len(s) for s in self.stops)
        self.ids: list[list[int]] = [[] for _ in range(num_rows)]
        self.text = [""] * num_rows
        self.prefix = [0] * num_rows
        self.read = [0] * num_rows

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push_one(self, row: int, token: int) -> bool:
        """Append ``token`` to ``row``; True when the row's text now contains a stop string.

        >>> from reinforced.models.tiny import build_tiny_tokenizer
        >>> tok = build_tiny_tokenizer()
        >>> s = StopStrings(tok, ["</answer>"], 1)
        >>> [s.push_one(0, i) for i in tok("x</answer>", add_special_tokens=False).input_ids]
        [False, True]
        """
        ids = self.ids[row]
        ids.append(token)
        prefix_text = self._decode(ids[self.prefix[row] : self.read[row]])
        new_text = self._decode(ids[self.prefix[row] :])
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return False  # nothing printable yet (special token, or a partial UTF-8 character)
        old_len = len(self.text[row])
        self.text[row] += new_text[len(prefix_text) :]
        self.prefix[row], self.read[row] = self.read[row], len(ids)
        window = self.text[row][max(0, old_len - self.max_len + 1) :]
        return any(s in window for s in self.stops)

    def push(self, rows: torch.Tensor, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Feed tokens [A] of cache rows (sample indices ``rows`` [A]); returns done [A] bool (active rows only)."""
        done = torch.zeros_like(active)
        for i in active.nonzero().flatten().tolist():
            done[i] = self.push_one(int(rows[i]), int(tokens[i]))
        return done
