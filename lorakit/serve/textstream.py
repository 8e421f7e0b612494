"""Token ids -> text, incrementally, with stop strings.

A streamed piece is only released once it cannot change: the bytes of one character may span
tokens (the decoder shows U+FFFD until the character is complete), and a piece that could be
the start of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations


class TextStream:
    """Decode a growing list of token ids; ``push`` returns the text that became final.

    ``text`` is the full released text so far; after a stop string matched, ``stopped`` is True
    and ``text`` ends just before it (the stop string itself is never released).
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self._decoded = ""  # everything decoded so far (may end in a held-back piece)
        self._prefix = 0  # decode window start, so each push decodes a few tokens, not all
        self._read = 0
        self.text = ""
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly released text (maybe empty)."""
        self.ids.append(token_id)
        prefix_text = self._decode(self.ids[self._prefix: self._read])
        window_text = self._decode(self.ids[self._prefix:])
        if len(window_text) > len(prefix_text) and not window_text.endswith("\ufffd"):
            self._decoded += window_text[len(prefix_text):]
            self._prefix, self._read = self._read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """No more tokens: release whatever is held back (an incomplete character is dropped
        by the decoder's replacement rules as in a full decode)."""
        if self._read < len(self.ids):
            prefix_text = self._decode(self.ids[self._prefix: self._read])
            self._decoded += self._decode(self.ids[self._prefix:])[len(prefix_text):]
            self._prefix = self._read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        hits = [i for i in (self._decoded.find(s, max(0, len(self.text) - len(s))) for s in self.stop) if i >= 0]
        if hits:
            end, self.stopped = min(hits), True
        elif final:
            end = len(self._decoded)
        else:
            end = len(self._decoded) - self._holdback()
        new = self._decoded[len(self.text): end] if end > len(self.text) else ""
        self.text += new
        return new

    def _holdback(self) -> int:
        """Length of the longest tail of the decoded text that begins some stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self._decoded)), longest, -1):
                if self._decoded.endswith(s[:n]):
                    longest = n
                    break
        return longest
