"""The `alexnet` command: one subcommand per stage, each a thin wrapper over its module.

Every module named below provides `add_arguments(parser)` and `run(args) -> int`. Only the
chosen subcommand's module is imported, so `alexnet --help` stays fast. A UserError, and as a
backstop any OSError (a filesystem failure), ends in one line on stderr and exit status 2, and
so does a malformed command line (`Parser`: no usage block, a pointer to --help instead). Every
command's --device is checked here, before the command does any work. Ctrl-C ends in one
line, "interrupted", and exit status 130; SIGTERM in "terminated (SIGTERM)" and 143 (`_signals`),
both after the command's cleanup, and both in the command's own words when it gives some.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import select
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any, NoReturn

from alexnet import __version__
from alexnet.errors import Terminated, UserError
from alexnet.stops import one_stop

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("alexnet.demo", "prepare Fashion-MNIST, train the paper's net on it, evaluate"),
    "prepare": ("alexnet.data.prepare", "preprocess a data source into a 256x256 store"),
    "train": ("alexnet.train", "train with the paper's recipe on a prepared store"),
    "evaluate": ("alexnet.evaluate", "top-1/top-5 error of checkpoints (centre or 10 crops)"),
    "predict": ("alexnet.predict", "five most probable classes of image files"),
    "figures": ("alexnet.figures", "the paper's figures 3 and 4 from a checkpoint"),
    "relu-vs-tanh": ("alexnet.experiments.relu_tanh", "the figure 1 experiment"),
    "ablate": ("alexnet.experiments.ablate", "train the paper net and its ablations"),
    "bench": ("alexnet.bench", "benchmarks: model, data, train, evaluate, pipeline"),
    "export": ("alexnet.export", "a checkpoint as ONNX, TorchScript or a weights-only file"),
}


# a reader that left the pipe is no error of ours: the status of a process SIGPIPE ended, as
# a command without Python's own handling of the signal would give
SIGPIPE_STATUS = 128 + signal.SIGPIPE
NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")  # argparse's: a value, not an option


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless the help already says it, the
    option has none (None, or an empty list for a repeatable one) or is an on/off flag
    (False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_ = action.help or ""
        if not action.option_strings or "default" in help_ or action.nargs == 0 or any(
                action.default is v for v in (None, False, argparse.SUPPRESS)) or \
                action.default == []:
            return help_
        return f"{help_} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors (a bad value or choice, an unknown or missing option) are
    ONE line, like every other error of the command: `PROG: error: MESSAGE (see PROG --help)`,
    exit status 2. Help and usage are printed as argparse prints them. A file name that
    starts with "-" (argparse reads it as an unknown option, then says another argument is
    missing) is named, with the `--` that makes it a file name (`takes_files`)."""

    takes_files = True  # whether the command line names files (a subcommand's does)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """argparse's, with the option's names kept (`_dashed`)."""
        action = super().add_argument(*args, **kwargs)
        self.__dict__.setdefault("option_names", set()).update(action.option_strings)
        if action.nargs != 0:
            self.__dict__.setdefault("valued", set()).update(action.option_strings)
        return action

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """argparse's, with the command line kept for `error`."""
        self.given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        """Print the one-line error on stderr and exit with status 2 (argparse's)."""
        dashed = self._dashed()
        if dashed is not None:
            message = f"{dashed}: no such option" + (
                "; a file or folder name that starts with '-' must come after --, itself after "
                "every option" if self.takes_files else "")
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} "
                     f"(see {self.prog} --help)\n")

    def _dashed(self) -> str | None:
        """The first argument before any `--` that starts with a single "-" and is no option
        of this parser, nor the value of the option before it, nor a negative number (which
        argparse reads as a value)."""
        given = getattr(self, "given", [])
        for before, arg in zip([None, *given], given, strict=False):
            if arg == "--":
                return None
            if (arg.startswith("-") and not arg.startswith("--") and len(arg) > 1
                    and arg not in getattr(self, "option_names", ())
                    and before not in getattr(self, "valued", ())
                    and not NEGATIVE_NUMBER.match(arg)):
                return arg
        return None


def _top_parser() -> argparse.ArgumentParser:
    """The parser that only knows the subcommand names."""
    parser = Parser(
        prog="alexnet",
        description="Krizhevsky, Sutskever & Hinton (2012) reproduced in PyTorch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {name:<14}{help_}" for name, (_, help_) in COMMANDS.items())
        + "\n\nrun 'alexnet COMMAND --help' for a command's options",
    )
    parser.takes_files = False
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; bad input ends in a one-line error and exit status 2, Ctrl-C in
    one line and 130, SIGTERM in one line and 143 (`_signals`), from the first instant: the
    command's module (torch) is imported inside."""
    program = argv is None  # the process itself, not a caller in the same process
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv:  # a bare `alexnet`: what there is to run, and a failing status for scripts
        top.print_help(sys.stderr)
        return 2
    if argv[0] not in COMMANDS:
        if argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
            top.error(f"unrecognized option {argv[0]!r}: give a COMMAND first, its options "
                      "after it")  # argparse would say that COMMAND is missing
        top.parse_args(argv[:1])
        return 2
    name, rest = argv[0], argv[1:]
    printable_names()
    with _signals(program):
        try:
            status = _run(name, rest)
            sys.stdout.flush()  # a reader gone is found here, not at the interpreter's exit
            _stopped(program)  # done: a Ctrl-C in the teardown cannot undo it
            return status
        except UserError as err:
            print(f"alexnet {name}: error: {err}", file=sys.stderr)
            return 2
        except BrokenPipeError as err:
            if not _stdout_gone():
                print(f"alexnet {name}: error: {_os_message(err)}", file=sys.stderr)
                return 2
            return SIGPIPE_STATUS
        except OSError as err:  # a filesystem failure that no module turned into a UserError
            print(f"alexnet {name}: error: {_os_message(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as err:
            _stopped(program)
            print(f"alexnet {name}: {_stop_message(err, 'interrupted')}", file=sys.stderr)
            return 130
        except Terminated as err:
            _stopped(program)
            print(f"alexnet {name}: {_stop_message(err, 'terminated (SIGTERM)')}",
                  file=sys.stderr)
            return 143


def _run(name: str, rest: list[str]) -> int:
    """Import the command's module, parse its options (argparse exits on --help or a bad
    command line), check --device and the net's environment settings, run it."""
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = Parser(prog=f"alexnet {name}", description=help_, formatter_class=HelpFormatter)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    _check_one_process(name)
    check_device(args)
    if name != "prepare":  # every other command builds or runs the net; prepare has no torch
        from alexnet.model import check_environment

        check_environment()
    with one_stop():  # a second Ctrl-C or SIGTERM waits for the first one's cleanup
        return int(module.run(args) or 0)


# commands that run in one process: under torchrun each rank would do the whole work again
# and the ranks would race for the same output files (a report, an export, a store)
ONE_PROCESS = ("prepare", "evaluate", "predict", "figures", "export")


def _check_one_process(name: str) -> None:
    """A one-line refusal of a ONE_PROCESS command launched as several ranks (torchrun sets
    RANK and WORLD_SIZE); read here without torch, which prepare does not import."""
    world = os.environ.get("WORLD_SIZE", "").strip()
    if name in ONE_PROCESS and "RANK" in os.environ and world.isdigit() and int(world) > 1:
        raise UserError(f"alexnet {name} runs in one process, and this launch has {world} "
                        f"ranks (WORLD_SIZE={world}): run it without torchrun (train is the "
                        "command that uses several processes)")


def _stop_message(err: BaseException, default: str) -> str:
    """What an interruption says: the command's own words when it gave some (prepare: the
    store keeps what was written; train: the checkpoint it saved), else `default`."""
    return " ".join(str(err).split()) or default


def _stopped(program: bool) -> None:
    """After a command ended (done, or stopped by Ctrl-C or SIGTERM), in the process itself
    (`program`): ignore both from now on. The command's work and cleanup are done; a Ctrl-C
    (a late or second press) or SIGTERM during the interpreter's teardown (half a second
    with torch) would print a traceback and replace the status main returns by a death by
    signal, or a finished command's 0 by 130."""
    if program and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM's handler while a command runs: further SIGTERMs are ignored (one during the
    cleanup changes nothing), and Terminated is raised where the command is."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


@contextlib.contextmanager
def _signals(program: bool) -> Iterator[None]:
    """SIGTERM (`timeout`, `docker stop`, a scheduler) raises Terminated in the main thread, as
    Ctrl-C raises KeyboardInterrupt, so every finally block runs: temporaries removed, worker
    pools and shared memory released. A handler set outside Python, or an ignored SIGTERM, is
    left alone, and the previous handler is put back at the end, except in the process itself
    (`program`) after a SIGTERM or a Ctrl-C: then both stay ignored (`_stopped`), so that
    another one during the interpreter's teardown (half a second with torch) cannot replace
    the status main returns (bench's 124, 130, 143) by a death by signal."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous in (
            None, signal.SIG_IGN):
        yield
        return
    signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        if not (program and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN):
            signal.signal(signal.SIGTERM, previous)


def printable_names() -> None:
    """Let stdout print any file name: one that is not UTF-8 (Python holds its bytes as
    surrogates) went back as those bytes only in the C locale, and raised UnicodeEncodeError
    under a strict locale (en_US.UTF-8) in the middle of a command's output."""
    stream = sys.stdout
    if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
        utf8 = (stream.encoding or "").lower().replace("-", "") == "utf8"
        stream.reconfigure(errors="surrogateescape" if utf8 else "backslashreplace")


def check_device(args: argparse.Namespace) -> None:
    """Refuse a --device that names no device, or CUDA where there is none, in one line before
    any work: here, so that no command can miss it (alexnet.evaluate.resolve_device)."""
    device = getattr(args, "device", None)
    if isinstance(device, str):
        from alexnet.evaluate import resolve_device

        resolve_device(device)


def _stdout_gone() -> bool:
    """Whether standard output's reader has gone (`alexnet ... | head`); if so, point it at
    /dev/null, so that nothing more is written to it and the interpreter's exit stays quiet."""
    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):  # no file descriptor: not the process's own stdout
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return gone


def _os_message(err: OSError) -> str:
    """One line for an OSError: the file, the system's reason, what to check."""
    where = f"{err.filename}: " if err.filename else ""
    reason = err.strerror or " ".join(str(err).split()) or type(err).__name__
    return f"{where}{reason}; check the path, its permissions and the free disk space"


if __name__ == "__main__":
    sys.exit(main())
