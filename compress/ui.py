"""Terminal output: progress bars and messages on stderr (rich), results on stdout.

``quiet`` keeps only warnings and errors; ``verbose`` adds detail and tracebacks.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


class _Task:
    def __init__(self, progress: Any, task_id: Any):
        self._p, self._id = progress, task_id

    def update(self, advance: float = 1, **info: Any) -> None:
        fields = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        self._p.update(self._id, advance=advance, info=fields)

    def set(self, completed: float) -> None:
        self._p.update(self._id, completed=completed)


class UI:
    def __init__(self, quiet: bool = False, verbose: bool = False):
        from rich.console import Console

        self.quiet, self.verbose = quiet, verbose
        self.err = Console(stderr=True, highlight=False)
        if not self.err.is_terminal:
            self.err = Console(stderr=True, highlight=False, width=200)
        self.out = Console(highlight=False, soft_wrap=True)
        if not self.out.is_terminal:  # CI logs and pipes: do not squeeze the table into 80 columns
            self.out = Console(highlight=False, soft_wrap=True, width=200)

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.err.print(msg)

    def detail(self, msg: str) -> None:
        if self.verbose:
            self.err.print(f"[dim]{msg}[/dim]")

    def warn(self, msg: str) -> None:
        self.err.print(f"[bold yellow]WARNING[/bold yellow] {msg}", soft_wrap=True)

    def error(self, msg: str) -> None:
        self.err.print(f"[bold red]error:[/bold red] {msg}", soft_wrap=True)

    @contextmanager
    def progress(self, description: str, total: float) -> Iterator[_Task]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if self.quiet or not self.err.is_terminal and not self.verbose:
            # no live bar in CI logs: one line when done keeps logs readable
            class _Quiet:
                def update(self, advance: float = 1, **info: Any) -> None:
                    pass

                def set(self, completed: float) -> None:
                    pass

            yield _Quiet()
            return
        with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("{task.fields[info]}"), console=self.err, transient=True) as p:
            yield _Task(p, p.add_task(description, total=total, info=""))


#: third-party loggers that are chatty at INFO/WARNING about things a user cannot act on
_CHATTY = ("nncf", "torchao", "torch.utils._pytree", "torch.onnx", "onnxruntime.quantization", "onnxscript")


def quiet_libraries(verbose: bool) -> None:
    """Keep library chatter (extension builds, optional kernels not found) out of the run's output.

    With ``-v`` nothing is silenced. Nothing is imported here: levels are set on the logger names.
    """
    import logging
    import warnings

    if verbose:
        return
    for name in _CHATTY:
        # a filter, not only a level: libraries reset their logger's level when they are imported
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        logger.addFilter(lambda record: record.levelno >= logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
