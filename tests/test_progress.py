"""Every progress bar honours TQDM_DISABLE (pipeline/progress.py): tqdm applies its TQDM_* environment defaults
only to arguments the caller leaves out, so a bar passes `disable=` only through `bar_disabled`."""

import re
import sys
from pathlib import Path

import pytest

from pipeline.progress import bar_disabled

ROOT = Path(__file__).resolve().parents[1]


class _Tty:
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("env", "progress", "disabled"),
    [
        (None, True, False),
        ("", True, False),
        ("0", True, False),
        ("1", True, True),
        ("True", True, True),
        (None, False, True),
    ],
)
def test_bar_disabled_follows_the_caller_and_tqdm_disable(monkeypatch, env, progress, disabled):
    monkeypatch.setattr(sys, "stderr", _Tty())
    if env is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", env)
    assert bar_disabled(progress) is disabled


def test_no_bar_on_a_stderr_that_is_not_a_terminal(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(sys, "stderr", open(__file__))  # a file: isatty() is False
    try:
        assert bar_disabled(True) is True
    finally:
        sys.stderr.close()


def test_every_disable_argument_in_the_pipeline_goes_through_bar_disabled():
    """`disable=not progress` would draw a bar under TQDM_DISABLE=1 whenever progress is True; only
    `bar_disabled(...)` or a constant True (never draw) may be passed."""
    offenders = []
    for path in sorted(p for p in (ROOT / "pipeline").rglob("*.py") if p.name != "progress.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in re.finditer(r"""["']?disable["']?\s*[=:]\s*(?!=)([^,)}\n]*)""", line):
                value = m.group(1).strip()
                if not (value.startswith("bar_disabled(") or value == "True"):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_scanner_sees_an_explicit_false(tmp_path):
    line = "for x in tqdm(xs, disable=not progress):"
    assert re.search(r"""["']?disable["']?\s*[=:]\s*(?!=)([^,)}\n]*)""", line).group(1) == "not progress"
