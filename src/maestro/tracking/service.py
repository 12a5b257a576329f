"""Experiments, runs, parameters, tags, metrics, artifacts, search, comparison and the
best run. Access follows the experiment's project (``authorize`` with the kind
``experiments``), so project roles and visibility apply as they do to models; an
experiment or run another tenant owns answers exactly like a missing one.

An experiment's ``status`` is derived from its active runs and stored, so lists can
filter on it: ``created`` until it has a run, then ``running`` while any run is
scheduled or running, else ``completed`` if at least one run completed, else
``failed``. It is recomputed, under a lock on the experiment row, whenever a run
is added or changes status. Only an experiment without runs takes a status set by
hand (the tracker API's update).

The functions live in modules by subject (``access``, ``runs``, ``experiments``, ``searching``);
this module is the entry point the routes and other domains import."""

from __future__ import annotations

from sqlalchemy import select

from maestro.projects.sources import register_counter, register_file_source
from maestro.tracking.access import (
    DUPLICATE_NAME,
    EPOCH,
    LOWER_IS_BETTER,
    NO_ARTIFACT,
    NO_EXPERIMENT,
    NO_RUN,
    RECENT_RUNS,
    caller_name,
    check_model,
    check_time,
    get_visible_experiment,
    get_visible_run,
    to_datetime,
    to_ms,
    writable_run,
)
from maestro.tracking.experiments import (
    best_run,
    compare_runs,
    create_experiment,
    default_direction,
    delete_experiment,
    delete_experiment_tag,
    experiment_detail,
    experiment_reads,
    experiments_query,
    list_project_experiments,
    readable_experiments,
    set_experiment_lifecycle,
    set_experiment_tag,
    update_experiment,
)
from maestro.tracking.models import Experiment, Lifecycle, Run, RunArtifact
from maestro.tracking.runs import (
    MAX_PATH_LENGTH,
    MAX_SEGMENT_LENGTH,
    artifact_path,
    artifact_reads,
    artifacts_prefix,
    artifacts_query,
    change_run_status,
    create_run,
    delete_run_artifacts,
    delete_run_tag,
    get_artifact,
    log_metric_points,
    log_metrics,
    log_params,
    record_artifact,
    refresh_status,
    rename_run,
    reopen_run,
    resume_or_change_run_status,
    run_read,
    run_reads,
    runs_query,
    set_run_lifecycle,
    set_run_tag,
    set_tags,
    writable_run_for_upload,
)
from maestro.tracking.searching import (
    search_runs,
    search_statement_for_plan,
    searchable_experiments,
)

__all__ = [
    "DUPLICATE_NAME",
    "EPOCH",
    "LOWER_IS_BETTER",
    "MAX_PATH_LENGTH",
    "MAX_SEGMENT_LENGTH",
    "NO_ARTIFACT",
    "NO_EXPERIMENT",
    "NO_RUN",
    "RECENT_RUNS",
    "artifact_path",
    "artifact_reads",
    "artifacts_prefix",
    "artifacts_query",
    "best_run",
    "caller_name",
    "change_run_status",
    "check_model",
    "check_time",
    "compare_runs",
    "create_experiment",
    "create_run",
    "default_direction",
    "delete_experiment",
    "delete_experiment_tag",
    "delete_run_artifacts",
    "delete_run_tag",
    "experiment_detail",
    "experiment_reads",
    "experiments_query",
    "get_artifact",
    "get_visible_experiment",
    "get_visible_run",
    "list_project_experiments",
    "log_metric_points",
    "log_metrics",
    "log_params",
    "readable_experiments",
    "record_artifact",
    "refresh_status",
    "rename_run",
    "reopen_run",
    "resume_or_change_run_status",
    "run_read",
    "run_reads",
    "runs_query",
    "search_runs",
    "search_statement_for_plan",
    "searchable_experiments",
    "set_experiment_lifecycle",
    "set_experiment_tag",
    "set_run_lifecycle",
    "set_run_tag",
    "set_tags",
    "to_datetime",
    "to_ms",
    "update_experiment",
    "writable_run",
    "writable_run_for_upload",
]


# --- what tracking keeps per project -----------------------------------------------------------
register_file_source(
    "run_artifacts",
    select(RunArtifact.storage_key)
    .join(Run, Run.id == RunArtifact.run_id)
    .join(Experiment, Experiment.id == Run.experiment_id),
    organization=Experiment.organization_id,
    project=Experiment.project_id,
    experiment=Experiment.id,
)
# Experiments the MLflow client deleted (kept for restoring) are not counted.
register_counter(
    "experiments",
    organization=Experiment.organization_id,
    project=Experiment.project_id,
    where=[Experiment.lifecycle_stage == Lifecycle.active],
)
