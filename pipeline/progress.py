"""Progress bars, one rule for all of them: a bar shows only when its caller asks for one, stderr is a
terminal and TQDM_DISABLE is unset (or "0").

tqdm reads its TQDM_* environment defaults only for arguments the caller does not pass, so an explicit
`disable=False` would override TQDM_DISABLE: callers pass `disable=bar_disabled(progress)` instead.
"""

from __future__ import annotations

import os
import sys


def bar_disabled(progress: bool = True) -> bool:
    """True when a bar must not be drawn: the caller did not ask for one, TQDM_DISABLE is set, or stderr is not a
    terminal (a log file or a CI console would keep every redraw)."""
    return not progress or os.environ.get("TQDM_DISABLE", "") not in ("", "0") or not sys.stderr.isatty()
