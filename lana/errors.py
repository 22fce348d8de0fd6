"""Errors that lana raises for bad input: each says what is wrong and how to fix it."""

from __future__ import annotations

from collections.abc import Iterable


class LanaError(Exception):
    """Base class of every error lana reports to the user (CLI exit code 2)."""

    exit_code = 2


class ConfigError(LanaError):
    """The YAML configuration (or an API argument) is invalid."""


class UnsupportedModelError(LanaError):
    """The teacher cannot be split into a chain of replaceable layers."""


class InfeasibleBudgetError(LanaError):
    """No architecture in the candidate space meets the requested budget."""

    def __init__(self, message: str, minimum: dict[str, float] | None = None) -> None:
        super().__init__(message)
        self.minimum = dict(minimum or {})


class ArtifactError(LanaError):
    """A file in the run directory is missing, corrupt or of the wrong kind."""


class BackendUnavailableError(LanaError):
    """A latency backend cannot run on this machine."""

    @classmethod
    def unknown(cls, name: object, known: Iterable[str]) -> BackendUnavailableError:
        """The error for a backend ``name`` that is not among the ``known`` ones."""
        return cls(f"unknown latency backend {name!r}; known backends: "
                   f"{', '.join(sorted(known))}")


class TrainingDivergedError(LanaError):
    """A training loss became NaN or infinite (usually a learning rate that is too high)."""
