"""Did-you-mean: the closest known name to a misspelt one, for error hints."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, known: Iterable[str]) -> str | None:
    """The quoted closest match to ``word`` among ``known`` (``"'to'"``), or None."""
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1, cutoff=0.6)
    return f"'{close[0]}'" if close else None
