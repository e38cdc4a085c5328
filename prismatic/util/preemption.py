"""Preemption: a scheduler's warning signal turns into a clean stop at the next safe point.

Slurm (`--signal`), Kubernetes and cloud spot instances send SIGTERM (or SIGUSR1, by choice) some time before they kill
a job. `Preemption` installs handlers for the chosen signals that only record the signal; the work loops (training
steps, feature-cache items, evaluation batches) ask `requested` at their safe points, finish what they are doing, save
it, and raise `Preempted`; `prismatic.util.cli.run_cli` turns that into the run's requeue status (0 by default) with a
one-line message, no traceback. The handler never raises into
the interrupted code, so a signal cannot tear a step, a checkpoint or a chunk in half, and a repeated signal (Slurm
signals every process of a step and torchrun forwards its own copy) changes nothing.

Under torchrun every rank must stop at the same step (a rank that left the loop would leave the others waiting in a
collective), so the training loop calls `agreed(ctx)`: an all-reduce of the flag, true on every rank when any rank was
signalled. The evaluation harness and the cache builder stop per rank (they share no collective inside their loops).

Data loader workers are processes of their own, and a scheduler that signals every process of the job (Slurm does)
would kill them with the signal's default action mid-batch; `ignore_in_worker` (a `worker_init_fn`) makes them ignore
the preemption signals, leaving the stop to the main process (workers still exit when it does).

The util layer: imports nothing from the rest of prismatic.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Sequence
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from prismatic.util.distributed import DistributedContext

DEFAULT_SIGNALS: tuple[str, ...] = ("SIGTERM", "SIGUSR1")


def parse_signals(names: Sequence[str]) -> tuple[signal.Signals, ...]:
    """Signal names (`SIGTERM`, `TERM`, `usr1`) as signals; an unknown or uncatchable name is a user error."""
    parsed = []
    for name in names:
        key = name.upper() if name.upper().startswith("SIG") else f"SIG{name.upper()}"
        member = getattr(signal.Signals, key, None)
        if member is None or member in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(
                f"--preemption_signals: {name!r} is not a signal that can be caught; use names such as SIGTERM, "
                "SIGUSR1, SIGUSR2 (or an empty list to keep the default signal actions)."
            )
        parsed.append(member)
    return tuple(dict.fromkeys(parsed))


class Preempted(Exception):  # not an error: the planned end of a preempted process
    """Raised by a work loop once its progress is saved; the entry point exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Preemption:
    """While entered, the given signals set `requested` instead of ending the process (main thread only; elsewhere,
    e.g. a test running the work in a thread, nothing is installed and `requested` stays False)."""

    def __init__(self, signals: Sequence[str] = DEFAULT_SIGNALS, exit_code: int = 0) -> None:
        if not 0 <= exit_code <= 255:
            raise ValueError(f"--preemption_exit_code must be in 0..255 (a process exit status), got {exit_code}.")
        self.signals, self.exit_code = parse_signals(signals), exit_code
        self.received: signal.Signals | None = None
        self.received_at: float | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            # Only recorded: printing here could re-enter a write the main thread was in the middle of; the loops
            # log the signal at their safe point.
            self.received, self.received_at = signal.Signals(signum), time.time()

    def __enter__(self) -> Preemption:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.received is not None

    def agreed(self, ctx: DistributedContext) -> bool:
        """Collective under torchrun: True on every rank when any rank received a signal (one all-reduce)."""
        if not ctx.is_distributed:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=ctx.device)
        return bool(ctx.all_reduce_max(flag).item() > 0)

    def stop(self, what: str) -> Preempted:
        """The exception a loop raises after saving: `what` says what was saved and how to continue."""
        name = self.received.name if self.received is not None else "a preemption signal"
        return Preempted(f"{name} received: {what}", self.exit_code)


def ignore_in_worker(worker_id: int, signals: Sequence[str] = DEFAULT_SIGNALS) -> None:
    """A data loader `worker_init_fn` (bind `signals` with functools.partial): the worker ignores the preemption
    signals, so a scheduler signalling every process cannot kill it mid-batch; the main process decides when to stop."""
    for sig in parse_signals(signals):
        signal.signal(sig, signal.SIG_IGN)
