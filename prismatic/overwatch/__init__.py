"""Rank-aware logging: `from prismatic.overwatch import initialize_overwatch`."""

from prismatic.overwatch.overwatch import initialize_overwatch

__all__ = ["initialize_overwatch"]
