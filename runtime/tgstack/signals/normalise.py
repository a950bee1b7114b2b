"""Fold the ways channels dress up text into the plain text the scanner reads. Pure.

Telegram channels write tickers in mathematical bold or italic letters (``𝐏𝐄𝐓𝐑𝟒``), put
U+2024 ONE DOT LEADER where a decimal point belongs (``36․50``, so that Telegram does not turn
the price into a link), separate words with non-breaking or thin spaces, type full-width
digits (``３６，５０``) and wrap words in Markdown emphasis. ``normalise`` maps all of these to
their plain forms:

* NFKC compatibility folding: mathematical letters and digits, full-width forms, circled
  digits, U+2024 and the other dot leaders, every Unicode space (NBSP, thin, narrow, figure)
  and the ordinal indicators (``1º`` → ``1o``);
* a thin, narrow or figure space *between digit groups* is a thousands separator and is
  dropped first (``125 000`` → ``125000``); a plain or non-breaking space never joins numbers;
* zero-width characters, soft hyphens, variation selectors and the keycap mark vanish;
* Markdown emphasis (``*``, ``_``, backticks) becomes nothing or a space;
* a hyphen inside a word becomes a space (``stop-loss``, ``day-trade``, ``preço-alvo``).

Invariant: the result is what a reader sees, never a different message — no letter, digit or
punctuation mark a reader would read is added, removed or changed in meaning. Plain ASCII
text (no Markdown, tab, carriage return or in-word hyphen) comes back unchanged.
"""

from __future__ import annotations

import re
import unicodedata

# Typographic thousands separators between digit groups: "125 000" with a thin space.
_THOUSANDS_SPACE = re.compile("(?<=\\d)[\u2009\u202f\u2007](?=\\d{3}(?!\\d))")

# Characters that carry no text: zero-width space/joiners, word joiner, BOM, soft hyphen,
# variation selectors (emoji presentation), the combining keycap of 1️⃣, Mongolian vowel sep.
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad\ufe0e\ufe0f\u20e3\u180e"
_REPLACEMENTS = {
    **dict.fromkeys(_INVISIBLE, ""),
    # Markdown emphasis as Telegram clients export it; an underscore also separates words
    "*": "",
    "`": "",
    "_": " ",
    # hyphens and the minus sign that look like "-" are "-"
    "\u2010": "-",
    "\u2011": "-",
    "\u2212": "-",
    "\r": "\n",
    "\t": " ",
}
# One pass finds them (most posts have none or a few; str.translate would visit every char).
_ODD = re.compile("[" + re.escape("".join(_REPLACEMENTS)) + "]")

_WORD_HYPHEN = re.compile(r"(?<=[^\W\d_])-(?=[^\W\d_])")


def _replace(match: re.Match[str]) -> str:
    return _REPLACEMENTS[match.group()]


def normalise(text: str) -> str:
    """Plain text with the Unicode presentation tricks and Markdown emphasis folded away."""
    if not text.isascii():
        if "\u2009" in text or "\u202f" in text or "\u2007" in text:
            text = _THOUSANDS_SPACE.sub("", text)
        text = unicodedata.normalize("NFKC", text)
    if _ODD.search(text):
        text = _ODD.sub(_replace, text)
    if "-" in text:
        text = _WORD_HYPHEN.sub(" ", text)
    return text
