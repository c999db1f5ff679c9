"""The `alexnet` command itself: help, version, unknown commands."""

import os
import subprocess
import sys

import pytest

from alexnet.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    try:
        main(["--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_refused():
    proc = subprocess.run([sys.executable, "-m", "alexnet", "nosuch"], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr


def test_unwritable_outputs_are_one_line_for_every_command(tmp_path, capsys):
    """/sys refuses new files even to root; a file cannot hold a folder."""
    import numpy as np
    import torch

    from alexnet.checkpoint import make_state, save
    from alexnet.data.store import open_split, write_store
    from alexnet.model import AlexNet

    classes = [{"wnid": f"c{i}", "name": f"class {i}"} for i in range(2)]
    images = np.random.default_rng(0).integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)
    write_store(tmp_path / "store" / "train", images, np.array([0, 1, 0, 1]), classes)
    write_store(tmp_path / "store" / "val", images, np.array([0, 1, 0, 1]), classes,
                stats=open_split(tmp_path / "store", "train").stats)
    torch.manual_seed(0)
    ckpt = save(tmp_path / "net.pt", make_state(
        AlexNet(num_classes=2, width=0.0625), classes=classes,
        stats=open_split(tmp_path / "store", "train").stats, epoch=1, step=0))
    (tmp_path / "a_file").write_text("not a folder")
    data = ["--data", str(tmp_path / "store")]
    commands = {
        "train": ["train", *data, "--batch-size", "2", "--set", "model.width=0.0625"],
        "evaluate": ["evaluate", str(ckpt), *data],
        "figures": ["figures", str(ckpt), *data, "--images", "1", "--queries", "1"],
    }
    for name, args in commands.items():
        for out in ("/sys/alexnet-out", str(tmp_path / "a_file" / "out")):
            code = main([*args, "--out", out, "--device", "cpu"])
            captured = capsys.readouterr()
            assert code == 2, (name, out, captured.err)
            assert len(captured.err.strip().splitlines()) == 1, (name, captured.err)
            assert captured.err.startswith(f"alexnet {name}: error:"), captured.err


def test_demo_refuses_a_set_of_the_keys_it_sets_itself(tmp_path, capsys):
    """Six keys come from the demo's own options and plan: a --set of one would be ignored."""
    for key, hint in (("optim.epochs=1", "--epochs"), ("run.out=x", "--out"),
                      ("run.time_limit=5", "--budget")):
        code = main(["demo", "--set", key, "--data", str(tmp_path), "--out",
                     str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "the demo sets this key itself" in err
        assert hint in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args", [["bench", "model", "--smoke"], ["demo"], ["train"]])
@pytest.mark.parametrize("device", ["bogus", "cuda"])
def test_a_bad_device_is_one_line_before_any_work(args, device, tmp_path, capsys, monkeypatch):
    """No command can miss the check: a device torch does not know, or CUDA on a machine
    without it (as any machine looks with torch.cuda.is_available False)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)  # anything written by mistake lands here
    assert main([*args, "--device", device]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "--device" in captured.err, captured.err
    assert captured.err.startswith(f"alexnet {args[0]}: error: ") and device in captured.err
    assert captured.out == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_malformed_command_line_is_one_line_for_every_command(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--no-such-option"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"alexnet {name}: error: ") and \
        err.endswith(f" (see alexnet {name} --help)\n"), err


@pytest.mark.parametrize("args, line", [
    (["train", "--epochs", "x"],
     "alexnet train: error: argument --epochs: invalid int value: 'x' (see alexnet train --help)"),
    (["evaluate", "ckpt", "--crops", "3"], "alexnet evaluate: error: argument --crops: invalid "
     "choice: 3 (choose from 1, 10) (see alexnet evaluate --help)"),
    (["ablate"], "alexnet ablate: error: the following arguments are required: --data "
     "(see alexnet ablate --help)"),
    (["train", "--epochs"], "alexnet train: error: argument --epochs: expected one argument "
     "(see alexnet train --help)"),
])
def test_argparse_errors_are_one_line_without_the_usage_block(args, line, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and capsys.readouterr().err == line + "\n"


@pytest.mark.parametrize("args", [["prepare", "-weird", "out"], ["prepare", "src", "-weird"],
                                  ["predict", "RUN", "-photo.jpg"]])
def test_a_file_name_that_starts_with_a_dash_is_named_with_the_way_out(args, capsys):
    """argparse read `-weird` as an unknown option and said that OUT (given) was missing."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    name = next(a for a in args[1:] if a.startswith("-"))
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"alexnet {args[0]}: error: {name}: no such option; ") and \
        "must come after --" in err, err


def test_help_is_unchanged_by_the_one_line_errors(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("usage: alexnet train") and "--epochs" in out
    assert "(default: [])" not in out and "(repeatable)" in out  # --set: no empty default


def _command(monkeypatch, tmp_path, source: str, name: str = "fake") -> str:
    """A command `alexnet NAME` whose module is `source` (add_arguments and run), imported by
    the CLI as every command's module is."""
    import alexnet.cli

    module = f"alexnet_test_{name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(alexnet.cli.COMMANDS, name, (module, "a stand-in command"))
    monkeypatch.delitem(sys.modules, module, raising=False)
    return name


@pytest.mark.parametrize("where", ["import", "add_arguments"])
def test_ctrl_c_while_the_command_starts_is_one_line(where, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the first second or so (the command's module importing torch, the parser
    being built) printed a KeyboardInterrupt traceback."""
    source = {"import": "raise KeyboardInterrupt\n",
              "add_arguments": "def add_arguments(parser):\n    raise KeyboardInterrupt\n"}
    name = _command(monkeypatch, tmp_path, source[where])
    try:
        code = main([name])
    except KeyboardInterrupt:  # not let through: pytest would stop the whole session
        pytest.fail("the KeyboardInterrupt went through main (a traceback)")
    assert code == 130
    assert capsys.readouterr().err == f"alexnet {name}: interrupted\n"


def test_argparse_still_exits_on_help_inside_the_guard(tmp_path, monkeypatch, capsys):
    name = _command(monkeypatch, tmp_path, "def add_arguments(parser):\n    pass\n")
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith(f"usage: alexnet {name}")


def test_an_interrupted_save_through_write_atomic_is_interrupted(tmp_path, monkeypatch, capsys):
    """Ctrl-C during a torch.save (a checkpoint, `export --format weights`) ended in torch's
    RuntimeError traceback and exit status 1."""
    name = _command(monkeypatch, tmp_path, SAVING.format(out=str(tmp_path / "net.pt")))
    assert main([name]) == 130
    assert capsys.readouterr().err == f"alexnet {name}: interrupted\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


SAVING = """
import torch

from alexnet.atomic import write_atomic


class Cut:
    def __init__(self, file):
        self.file, self.writes = file, 0

    def write(self, data):
        self.writes += 1
        if self.writes == 3:
            raise KeyboardInterrupt  # as Ctrl-C lands while the zip writer writes
        return self.file.write(data)

    def flush(self):
        self.file.flush()


def add_arguments(parser):
    pass


def run(args):
    write_atomic({out!r}, lambda f: torch.save({{"w": torch.zeros(10_000)}}, Cut(f)))
"""

# A command that writes a file the way every command does (atomic.replacing) and gets SIGTERM
# halfway, as from `timeout` or `docker stop`; argv[1] says what else happens.
TERMINATED = """
import os, signal, sys, time

from alexnet.atomic import replacing
from alexnet.errors import Terminated


def add_arguments(parser):
    parser.add_argument("how")
    parser.add_argument("out")


def run(args):
    if args.how == "message":
        raise Terminated("terminated (SIGTERM): a checkpoint was saved at step 7; resume it")
    with replacing(args.out) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"half a cache")
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
        finally:
            if args.how == "twice":  # a second SIGTERM (timeout, then its process group)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.1)
    return 0
"""

SIGTERM_SCRIPT = """
import signal, sys
sys.path.insert(0, sys.argv.pop(1))
import alexnet.cli
alexnet.cli.COMMANDS["fake"] = ("alexnet_test_fake", "a stand-in command")
before = signal.getsignal(signal.SIGTERM)
code = alexnet.cli.main(sys.argv[1:])
assert signal.getsignal(signal.SIGTERM) == before, "the previous handler was not restored"
sys.exit(code)
"""


@pytest.mark.parametrize("how", ["once", "twice", "message"])
def test_sigterm_is_one_line_and_143_after_the_cleanup(how, tmp_path):
    """SIGTERM killed every command (but bench) on the spot: no message, and the cleanup of
    finally blocks skipped (here the temporary beside the output, 21 GB for ImageNet's fc7
    cache; elsewhere worker pools and shared memory). A second SIGTERM during the cleanup
    changes nothing; a Terminated raised with a message (train's guard) is said in its words."""
    (tmp_path / "alexnet_test_fake.py").write_text(TERMINATED)
    out = tmp_path / "cache.npy"
    proc = subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT, str(tmp_path), "fake", how,
                           str(out)], capture_output=True, text=True, timeout=60)
    line = ("alexnet fake: terminated (SIGTERM): a checkpoint was saved at step 7; resume it"
            if how == "message" else "alexnet fake: terminated (SIGTERM)")
    assert (proc.returncode, proc.stderr) == (143, line + "\n")
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".py") == []


# A command stopped by Ctrl-C whose process then gets a second Ctrl-C and a SIGTERM while the
# interpreter tears down (a second press, or a group signal; with torch, half a second).
SECOND_PRESS = """
import atexit, os, signal, sys, time
sys.path.insert(0, sys.argv.pop(1))
import alexnet.cli


def press_again():
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)


atexit.register(press_again)
alexnet.cli.COMMANDS["fake"] = ("alexnet_test_fake", "a stand-in command")
sys.argv[0] = "alexnet"
sys.exit(alexnet.cli.main())
"""


def test_a_second_ctrl_c_after_the_command_stopped_changes_nothing(tmp_path):
    """A second Ctrl-C once the command had ended by the first printed a KeyboardInterrupt
    traceback, and the process died by SIGINT instead of exiting with 130."""
    (tmp_path / "alexnet_test_fake.py").write_text(
        "def add_arguments(parser):\n    pass\n\n\ndef run(args):\n    raise KeyboardInterrupt\n")
    proc = subprocess.run([sys.executable, "-c", SECOND_PRESS, str(tmp_path), "fake"],
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (130, "alexnet fake: interrupted\n")


def test_a_ctrl_c_after_the_command_finished_changes_nothing(tmp_path):
    """A Ctrl-C or SIGTERM in the interpreter's teardown after a command had done its work
    printed a traceback (threading's shutdown, torch.library's) and the process died by
    SIGINT, or exited 130, although every output was written."""
    (tmp_path / "alexnet_test_fake.py").write_text(
        "def add_arguments(parser):\n    pass\n\n\ndef run(args):\n    print('done')\n")
    proc = subprocess.run([sys.executable, "-c", SECOND_PRESS, str(tmp_path), "fake"],
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "done\n", "")


def test_a_reader_that_left_the_pipe_is_no_error(tmp_path):
    """`alexnet train --print-config | head -c 10`: the reader gone was an 'error: Broken pipe;
    check the path ...' and status 2; now nothing is said and the status is SIGPIPE's. A
    reader that stays gets the whole output."""
    from alexnet.cli import SIGPIPE_STATUS

    command = [sys.executable, "-m", "alexnet", "train", "--print-config"]
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the first write
    gone = subprocess.run(command, stdout=write, stderr=subprocess.PIPE, text=True,
                          cwd=tmp_path)
    os.close(write)
    assert (gone.returncode, gone.stderr) == (SIGPIPE_STATUS, "")
    assert SIGPIPE_STATUS == 141
    kept = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert kept.returncode == 0 and kept.stderr == "" and '"optim"' in kept.stdout


def test_a_second_stop_waits_for_the_first_ones_cleanup():
    """one_stop (every command's): the first Ctrl-C raises; another one while that
    KeyboardInterrupt unwinds (its cleanup) is ignored; once it is handled, Ctrl-C stops
    again as the first; the handler is put back at the end."""
    import signal

    from alexnet.stops import one_stop

    before = signal.getsignal(signal.SIGINT)
    cleaned = []
    with one_stop():
        with pytest.raises(KeyboardInterrupt):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                pytest.fail("the first Ctrl-C did not stop")  # pragma: no cover
            finally:
                os.kill(os.getpid(), signal.SIGINT)  # during the cleanup: ignored
                cleaned.append(True)
        with pytest.raises(KeyboardInterrupt):  # the stop handled: a new one stops
            os.kill(os.getpid(), signal.SIGINT)
    assert cleaned == [True] and signal.getsignal(signal.SIGINT) is before
