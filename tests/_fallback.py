"""The shared half of the tests that a Triton kernel which cannot run falls back: without
TRITON_INTERPRET the kernels cannot launch on CPU tensors (no GPU driver), a real failure,
as a kernel that does not compile on a GPU would be; `auto` must not raise."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import alexnet.model


def cpu_check_warning(check: Callable[[torch.device], bool], key: str,
                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> str:
    """Run a kernel's first-use `check` (cached at alexnet.model._TRITON[key]) twice on the
    CPU: it fails both times, the second from its cache, having written exactly one line on
    stderr, which is returned for the caller's own assertions."""
    monkeypatch.delitem(alexnet.model._TRITON, key, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert check(torch.device("cpu")) is False
    assert check(torch.device("cpu")) is False  # cached: checked and warned once
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n")
    return err
