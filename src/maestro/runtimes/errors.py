"""The errors of model serving. Each carries a ``reason`` code so that a protocol with
its own error shape (Open Inference, MLflow scoring) can map it, and each is a
``MaestroError``, so raised from a platform route it renders in the platform's shape."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from maestro.errors import MaestroError, code_for_status

# Why a model could not be loaded, and the status a route answers with: 409 where the
# version's state is the obstacle (an admin's trust would lift it), 422 where the file is.
LOAD_REASONS: dict[str, int] = {
    "not_trusted": 409,
    "untrusted_types": 409,
    "no_file": 409,
    "file_missing": 409,
    "too_large_for_cache": 409,
    "unsupported_format": 422,
    "unsupported_model": 422,
    "external_data": 422,
    "corrupt": 422,
    "checksum_mismatch": 422,
    "too_large": 413,
    "invalid_schema": 422,
    "schema_mismatch": 422,
    "not_a_model": 422,
    "warm_up_failed": 422,
}


class ServingError(MaestroError):
    """Base of the serving errors; ``reason`` is a stable, machine-readable code."""

    def __init__(self, reason: str, message: str, *, status: int = 422, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.reason = reason
        # MaestroError declares both as ClassVars; a serving error's reason decides them.
        self.status_code = status  # type: ignore[misc]  # set per instance on purpose
        self.code = code_for_status(status)  # type: ignore[misc]  # set per instance on purpose

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r})"


class ModelLoadError(ServingError):
    """A model file that cannot, or may not, be loaded."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message, status=LOAD_REASONS.get(reason, 422))


class InputError(ServingError):
    """Input rows that do not fit the model's input schema. ``row`` and ``feature``
    name the first offending value when there is one."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        row: int | None = None,
        feature: str | None = None,
        field: str | None = None,
        details: Iterable[tuple[str | None, str]] | None = None,
    ) -> None:
        super().__init__(
            reason,
            message,
            status=422,
            details=details if details is not None else [(field, message)],
        )
        self.row = row
        self.feature = feature
        self.field = field


class PredictionError(ServingError):
    """The model itself could not answer (no probabilities, or its library failed)."""
