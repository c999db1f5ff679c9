"""The shared half of the tests that a Triton kernel which cannot run falls back: without
TRITON_INTERPRET the kernels cannot launch on CPU tensors (no GPU driver), a real failure,
as a kernel that does not compile on a GPU would be; `auto` must not raise."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from _interpret import run_interpreted

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


def interpreted_check(patch: str, check: str, show: str = "ok") -> str:
    """What a kernel's first-use `check` (alexnet.model's, on CPU tensors through Triton's
    interpreter, in a child process: TRITON_INTERPRET must be set before triton is imported)
    prints after `patch` (Python lines) has broken the kernels: `show` (the check's result
    `ok`, or an expression of it), then what it wrote on stderr."""
    code = ("import contextlib, io, torch\n"
            "import alexnet.model\n"
            f"{patch}"
            "err = io.StringIO()\n"
            "with contextlib.redirect_stderr(err):\n"
            f"    ok = alexnet.model.{check}(torch.device('cpu'))\n"
            f"print({show})\n"
            "print(err.getvalue(), end='')\n")
    return run_interpreted(["-c", code], timeout=300).stdout
