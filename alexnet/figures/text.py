"""Names (class names, run folders) as text that matplotlib can draw, and one notice for the
characters that no font has.

Names come from folder names and data set files, so they may hold anything: bytes that are not
UTF-8 (Python's surrogates `\\udcff`, which matplotlib refuses with a TypeError), control
characters (a tab is drawn as a box, a newline breaks the title), an even number of `$` (parsed
as mathtext, which may raise), or characters the fonts lack (matplotlib warns once per glyph
per drawing). `drawable` handles the first two, the plotting functions pass `parse_math=False`
for the third, and `noting_missing_glyphs` turns the warnings into one short notice.
"""

from __future__ import annotations

import re
import sys
import unicodedata
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

ELLIPSIS = "\u2026"  # marks a cut name in every figure
UNDECODABLE = range(0xDC80, 0xDD00)  # surrogateescape's stand-ins for the bytes 0x80..0xff
GLYPH_WARNING = r"Glyph (\d+) .*missing from font"  # matplotlib's text, since 3.6
NOTICE_CHARS = 8  # characters named in the notice; the rest are counted

_REPORTED: set[str] = set()  # characters this process has already named in a notice
_PENDING: list[set[str]] = []  # characters held back by an open `one_glyph_notice`


def drawable(text: str) -> str:
    """`text` with every character matplotlib cannot draw written as an escape: an undecodable
    byte as `\\xff` (not U+FFFD: the escape keeps the byte, so two different names stay
    different), any other surrogate or control character as Python writes it, `\\t`, `\\n`,
    `\\x07` (a tab would be a box, a newline would run titles into each other)."""
    return "".join(_escape(ch) for ch in text)


def _escape(ch: str) -> str:
    """One character, or its escape when it is a surrogate or a control character."""
    if ord(ch) in UNDECODABLE:
        return f"\\x{ord(ch) - 0xDC00:02x}"
    if unicodedata.category(ch) in ("Cc", "Cs"):
        return ch.encode("unicode_escape").decode("ascii")
    return ch


def fit(text: str, length: int) -> str:
    """`drawable(text)` in at most `length` characters, a cut one ending in an ellipsis."""
    text = drawable(text)
    return text if len(text) <= length else text[:max(length - 1, 0)] + ELLIPSIS


def class_text(cls: Mapping[str, Any] | str, index: int) -> str:
    """What a figure calls a class: an ImageNet synset's first synonym ("tench, Tinca tinca"
    is `tench`), any other name whole (an image folder's class is its folder name, commas
    and all). A synset is a class whose name differs from its wnid; a store writes a folder's
    name as both."""
    if isinstance(cls, str):
        return cls or str(index)
    name, wnid = str(cls.get("name") or ""), str(cls.get("wnid") or "")
    if wnid and name and name != wnid:
        return name.split(",")[0].strip() or name
    return name or wnid or str(index)


def class_labels(classes: Sequence[Mapping[str, Any] | str], length: int) -> list[str]:
    """The label of each class in at most `length` characters (`class_text`, then `fit`).

    Labels that come out equal for different classes (a cut, or ImageNet's two "crane"
    synsets) end in the class index instead, `crane [134]`: always unique, and the label
    number of evaluate's per-class table.
    """
    labels = [fit(class_text(c, i), length) for i, c in enumerate(classes)]
    seen: dict[str, int] = {}
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
    for i, label in enumerate(labels):
        if seen[label] > 1:
            suffix = f" [{i}]"
            labels[i] = fit(class_text(classes[i], i), max(length - len(suffix), 1)) + suffix
    return labels


@contextmanager
def noting_missing_glyphs() -> Iterator[None]:
    """Draw inside: matplotlib's warnings about glyphs no font has are caught and named in
    one notice (`one_glyph_notice`); every other warning goes on as it was."""
    missing: set[str] = set()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.filterwarnings("always", GLYPH_WARNING, UserWarning)
            yield
    finally:
        for w in caught:
            found = re.match(GLYPH_WARNING, str(w.message))
            if found:
                missing.add(chr(int(found[1])))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno,
                                       source=w.source)
        _note(missing)


@contextmanager
def one_glyph_notice() -> Iterator[None]:
    """Hold back the notices of the figures drawn inside and print one at the end, for a
    command that draws several."""
    _PENDING.append(set())
    try:
        yield
    finally:
        _report(_PENDING.pop())


def _note(missing: set[str]) -> None:
    """Report `missing` now, or when the open `one_glyph_notice` ends."""
    if _PENDING:
        _PENDING[-1].update(missing)
    else:
        _report(missing)


def _report(missing: set[str]) -> None:
    """One line on stderr naming the characters not named before by this process (so curves
    redrawn every epoch say it once)."""
    new = sorted(missing - _REPORTED)
    if not new:
        return
    _REPORTED.update(new)
    named = ", ".join(f"{ch} U+{ord(ch):04X}" for ch in new[:NOTICE_CHARS])
    more = f" and {len(new) - NOTICE_CHARS} more" if len(new) > NOTICE_CHARS else ""
    print(f"alexnet: note: no font matplotlib uses can draw {named}{more}; the figures show "
          "them as boxes (a font that has them, e.g. Noto Sans CJK, added to matplotlib's "
          "font.family would draw them)", file=sys.stderr)
