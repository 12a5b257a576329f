"""The registry through which other domains tell projects and organisations what they
hold: complete once the entry points have imported every domain, loud when asked for
something nobody registered."""

from __future__ import annotations

import pytest

import maestro.domains
from maestro.projects import sources


class TestRegistry:
    def test_every_domain_that_holds_files_or_counts_registers(self) -> None:
        maestro.domains.register_all()
        assert sorted(sources.file_sources()) == [
            "logged_models",
            "model_versions",
            "project_files",
            "run_artifacts",
        ]
        assert sorted(sources.counters()) == ["deployments", "experiments", "models"]

    def test_an_unregistered_counter_is_an_error_not_a_zero(self) -> None:
        with pytest.raises(RuntimeError, match="no counter 'widgets'"):
            sources.counts(None, "widgets", "project", ["proj_x"])  # type: ignore[arg-type]
