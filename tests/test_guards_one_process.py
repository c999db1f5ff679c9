"""Commands that run in one process are refused in one line under a launch of several ranks
(torchrun): each rank did the whole evaluation again, and the ranks raced for the same report
file, the loser failing with another writer's lock error (found by a torchrun audit)."""

from __future__ import annotations

import pytest

from alexnet.cli import ONE_PROCESS, main


def _argv(command: str, tmp_path) -> list[str]:
    """A command line of `command` that parses (its files need not exist: the refusal comes
    before any is read)."""
    ckpt, image, out = str(tmp_path / "run.pt"), str(tmp_path / "a.png"), tmp_path / "out"
    return {"prepare": ["prepare", str(tmp_path / "src"), str(out)],
            "evaluate": ["evaluate", ckpt], "predict": ["predict", ckpt, image],
            "figures": ["figures", ckpt, "--out", str(out)],
            "export": ["export", ckpt, "--out", str(out / "net.onnx")]}[command]


@pytest.mark.parametrize("command", ONE_PROCESS)
def test_a_one_process_command_under_two_ranks_is_one_line(command, tmp_path, monkeypatch,
                                                            capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(_argv(command, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"alexnet {command} runs in one process" in err and "WORLD_SIZE=2" in err
    assert "without torchrun" in err
    assert not (tmp_path / "out").exists()


def test_one_rank_or_no_launch_is_not_refused(tmp_path, monkeypatch, capsys):
    """torchrun --nproc_per_node 1 (WORLD_SIZE=1) and a plain process run the command: here
    it goes on to its own error, the missing checkpoint."""
    for world in ("1", None):
        if world is None:
            monkeypatch.delenv("RANK", raising=False)
            monkeypatch.delenv("WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("RANK", "0")
            monkeypatch.setenv("WORLD_SIZE", world)
        assert main(_argv("evaluate", tmp_path)) == 2
        err = capsys.readouterr().err
        assert "runs in one process" not in err and "run.pt" in err
