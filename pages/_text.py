"""Text from outside (callback fields, result URLs, names, emails, prompts, ?db=, model and
provider names from a database, error messages that quote them) inside Markdown-rendering
elements (st.caption, st.error, st.markdown, metric labels and values, expander and checkbox
labels, help tooltips...).

    plain(value) -> str
        A Markdown code span, so the text shows exactly as typed and never becomes a link,
        an image, formatting, a colour or an icon. The one escaping helper: every page
        interpolates outside text through it. Tables, st.text, st.code, st.json and the
        options of selectboxes and multiselects need nothing: they do not interpret Markdown.

Escaping punctuation with backslashes is not enough: Streamlit's Markdown turns a bare
`http://...`, `www....` or e-mail address into a link after escapes are resolved; inside a code
span nothing is linked.
"""

from __future__ import annotations

import re
from typing import Any

_BACKTICKS = re.compile(r"`+")
_INERT = re.compile(r"[A-Za-z0-9 ]+")  # letters, digits and spaces mean nothing to Markdown


def plain(value: Any) -> str:
    """`value` as a Markdown code span (see module doc): whitespace runs and line breaks become one
    space, and the span is fenced with more backticks than any run inside it. Text of letters,
    digits and spaces only ("FAILED", "Ana Lima") can mean nothing else and is returned as it is."""
    text = " ".join(str("" if value is None else value).split())
    if _INERT.fullmatch(text):
        return text
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text else ""
    return f"{fence}{pad}{text}{pad}{fence}"
