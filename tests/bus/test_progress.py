"""The command line's progress line: counts, lines printed above it, erased at the end."""

from __future__ import annotations

import io

from bus.progress import ProgressLine


def test_progress_line_counts_prints_above_and_erases_itself():
    out = io.StringIO()
    with ProgressLine("flow tests", 4, out) as bar:
        bar.advance()
        bar.print("PASS returns: creates a ticket")
        bar.advance(10)  # never past the total
    text = out.getvalue()
    frames = text.split("\r\x1b[2K")
    assert "flow tests [" + "#" * 7 + "." * 23 + "] 1/4" in frames
    assert "PASS returns: creates a ticket\n" in frames
    assert frames[-2] == "flow tests [" + "#" * 30 + "] 4/4"
    assert frames[-1] == ""  # erased: the terminal is left clean
