"""Progress: a tqdm bar on a terminal, plain throttled lines (no escape codes) in a log."""

import io

import pytest

from wherefrom import progress
from wherefrom.progress import track


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def shown(monkeypatch):
    monkeypatch.setattr(progress, "_enabled", True)


def test_log_stream_gets_plain_lines(shown, monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    monkeypatch.setenv("WHEREFROM_PROGRESS_INTERVAL", "0")
    assert list(track(range(4), "retraining")) == [0, 1, 2, 3]
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("[wherefrom] retraining: 1/4 (25%)")
    assert lines[-1].startswith("[wherefrom] retraining: done 4/4 in")
    assert len(lines) == 4  # 1/4, 2/4, 3/4, then the done line (no separate 4/4 line)


def test_short_loop_writes_nothing_to_a_log(shown, monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    monkeypatch.delenv("WHEREFROM_PROGRESS_INTERVAL", raising=False)
    assert sum(track(iter(range(100)), "fast")) == 4950
    assert log.getvalue() == ""


def test_terminal_gets_a_tqdm_bar(shown, monkeypatch):
    term = _Terminal()
    monkeypatch.setattr("sys.stderr", term)
    assert list(track(range(3), "bar")) == [0, 1, 2]
    assert "\r" in term.getvalue() and "bar" in term.getvalue()


def test_silenced_writes_nothing(monkeypatch):
    log = _Terminal()
    monkeypatch.setattr("sys.stderr", log)
    monkeypatch.setattr(progress, "_enabled", False)
    assert list(track(range(3), "quiet")) == [0, 1, 2]
    assert log.getvalue() == ""
