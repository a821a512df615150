"""Text from outside (names, emails, prompts, model and provider names from a database) inside
Markdown-rendering elements.

    plain(text) -> str      every Markdown control character escaped, so it shows as typed
"""

from __future__ import annotations

_MARKDOWN = set("\\`*_{}[]()#+-.!|<>~$:")


def plain(text: object) -> str:
    return "".join("\\" + ch if ch in _MARKDOWN else ch for ch in str(text))
