"""Rank-aware logging: every rank can log, but by default only rank 0 speaks, so torchrun output stays readable.

Ranks are read from the environment variables torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE), which lets this module be
imported before `torch.distributed` is initialised.
"""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s | %(levelname)-7s | %(name)s | %(message)s"
_DATE_FORMAT = "%m/%d %H:%M:%S"


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


class Overwatch:
    """A logger wrapper with `info`/`warning`/... on rank 0 only, and `*_all` variants that log on every rank."""

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)
        if not logging.getLogger().handlers and not self.logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(_FORMAT, _DATE_FORMAT))
            self.logger.addHandler(handler)
            self.logger.propagate = False
        self.logger.setLevel(os.environ.get("PRISMATIC_LOG_LEVEL", "INFO").upper())

    @property
    def rank(self) -> int:
        return _rank()

    @property
    def world_size(self) -> int:
        return int(os.environ.get("WORLD_SIZE", "1"))

    @property
    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", "0"))

    def is_rank_zero(self) -> bool:
        return self.rank == 0

    def _log(self, level: int, msg: str, *args: object, all_ranks: bool = False) -> None:
        if all_ranks:
            self.logger.log(level, f"[rank {self.rank}] {msg}", *args, stacklevel=3)
        elif self.is_rank_zero():
            self.logger.log(level, msg, *args, stacklevel=3)

    def debug(self, msg: str, *args: object) -> None:
        self._log(logging.DEBUG, msg, *args)

    def info(self, msg: str, *args: object) -> None:
        self._log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: object) -> None:
        self._log(logging.WARNING, msg, *args)

    def error(self, msg: str, *args: object) -> None:
        self._log(logging.ERROR, msg, *args)

    def info_all(self, msg: str, *args: object) -> None:
        self._log(logging.INFO, msg, *args, all_ranks=True)

    def warning_all(self, msg: str, *args: object) -> None:
        self._log(logging.WARNING, msg, *args, all_ranks=True)


def initialize_overwatch(name: str) -> Overwatch:
    return Overwatch(name)
