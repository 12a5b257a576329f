"""Every setting Maestro reads, in one place.

Values come from the environment (prefix ``MAESTRO_``) or a ``.env`` file in the
working directory. Anything left unset falls back to an embedded default that runs
on one machine with no other services: SQLite, a local artifact directory and a
SQLite-backed job queue, all under ``data_dir``.
"""

from __future__ import annotations

import logging
import os
import secrets
from enum import StrEnum
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Published in the source, so accepted only by the test suite (MAESTRO_ENVIRONMENT=test).
DEFAULT_SECRET_KEY = "maestro-insecure-development-key-change-me"  # noqa: S105 - refused outside tests
SECRET_KEY_FILE = "secret_key"  # noqa: S105 - a file name in the data directory

logger = logging.getLogger("maestro.config")


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAESTRO_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # --- identity of this installation -------------------------------------------------
    environment: Environment = Field(
        Environment.development,
        description="`production` refuses insecure defaults such as the built-in secret key.",
    )
    secret_key: str | None = Field(
        None,
        description="Signs access tokens and encrypts stored secrets. Unset: a random key generated on first "
        "start in `<data_dir>/secret_key` (one host only; set it when several hosts share one database).",
    )

    # --- where state lives ---------------------------------------------------------------
    data_dir: Path = Field(
        Path("maestro-data"),
        description="Directory for the embedded database, artifacts and job queue.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL. Default: SQLite at `<data_dir>/maestro.db`. "
        "`postgresql://…` is accepted and uses psycopg 3.",
    )
    database_echo: bool = Field(False, description="Log every SQL statement.")
    database_pool_size: int = Field(
        10, ge=1, le=200, description="Connections kept per process (PostgreSQL)."
    )
    sqlite_busy_timeout_ms: int = Field(
        10_000, ge=0, description="How long an SQLite writer waits for the lock before failing."
    )
    storage_url: str | None = Field(
        None,
        description="fsspec URL of the artifact store, e.g. `s3://bucket/prefix`. "
        "Default: the local directory `<data_dir>/artifacts`.",
    )
    redis_url: str | None = Field(
        None,
        description="When set, the job queue and rate limits use Redis instead of embedded storage.",
    )

    # --- HTTP server ---------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `maestro serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `maestro serve` binds.")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes for `maestro serve`.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS, comma-separated. Empty: CORS headers are not sent.",
    )
    public_url: str | None = Field(
        None, description="Base URL clients use to reach this server (for links such as endpoint URLs)."
    )
    fast_paths: bool = Field(
        True,
        description="Answer the hottest routes (platform inference, the model server's predictions, "
        "MLflow metric logging and run reads) with plain ASGI layers that skip FastAPI's routing and "
        "dependency solving. Off: the FastAPI routes answer them, with the same answers, more slowly.",
    )

    # --- identity and access ---------------------------------------------------------------
    allow_registration: bool = Field(
        True, description="Anyone may sign up with POST /api/v1/auth/register. Turn off to invite only."
    )
    access_token_ttl_seconds: int = Field(
        900, ge=60, le=86_400, description="Lifetime of an access token (a signed JWT)."
    )
    refresh_token_ttl_days: int = Field(30, ge=1, le=365, description="Lifetime of a login session.")
    invitation_ttl_hours: int = Field(
        168, ge=1, le=24 * 90, description="How long an invitation can be accepted."
    )
    password_hash_time_cost: int = Field(3, ge=1, le=20, description="argon2id passes over memory.")
    password_hash_memory_kib: int = Field(65_536, ge=8, description="argon2id memory per hash, in KiB.")
    rate_limits_enabled: bool = Field(
        True,
        description="Apply the organisations' plan limits, and the sign-in, sign-up and refresh limits.",
    )
    login_limit_per_ip: str = Field("20/minute", description="Login attempts allowed from one address.")
    login_limit_per_account: str = Field("10/minute", description="Login attempts allowed for one email.")
    refresh_limit_per_ip: str = Field(
        "60/minute",
        description="Refresh-token exchanges (POST /api/v1/auth/refresh) allowed from one address.",
    )
    refresh_reuse_grace_seconds: float = Field(
        10.0,
        ge=0,
        le=300,
        description="A refresh token spent less than this long ago may be presented again and gets a new "
        "pair of the same session (concurrent refreshes); later reuse ends the session. 0: never.",
    )
    default_plan: str = Field(
        "unlimited",
        pattern="^(unlimited|free|professional|enterprise)$",
        description="Plan of new organisations: unlimited (a self-hosted install's default), free 100 "
        "requests/hour, professional 10,000/hour, enterprise unlimited. Counted per organisation.",
    )
    first_user_is_admin: bool = Field(
        False,
        description="The first account registered through POST /api/v1/auth/register becomes an "
        "instance administrator (when no administrator exists yet).",
    )

    # --- request bodies, database locks and query cost --------------------------------------
    request_body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="A client that sends nothing of its request body for this long is answered 408 "
        "and disconnected; whatever it had sent is discarded.",
    )
    statement_timeout_ms: int = Field(
        30_000,
        ge=0,
        le=3_600_000,
        description="Longest a single database statement of an HTTP request may run before it is "
        "stopped and answered 503 (PostgreSQL statement_timeout; an SQLite progress check). "
        "Background jobs and maintenance are not bound by it. 0 turns it off.",
    )

    # --- heavy requests: response sizes and the shared pool for CPU-heavy work ----------------
    heavy_workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="CPU-heavy requests (model card PDFs, metric downsampling) running at once in one "
        "server process. Default: the number of CPU cores minus one, at least 1.",
    )
    heavy_per_owner: int = Field(
        1,
        ge=1,
        le=64,
        description="CPU-heavy requests one caller, and one organisation, may have running at once.",
    )
    heavy_queue_per_owner: int = Field(
        2,
        ge=0,
        le=64,
        description="CPU-heavy requests of one caller, or one organisation, that may wait for a turn; "
        "more answer 429.",
    )
    heavy_queue: int = Field(
        8, ge=0, le=1000, description="CPU-heavy requests that may wait for a turn in all; more answer 503."
    )
    heavy_wait_seconds: float = Field(
        10.0, gt=0, le=300, description="How long a CPU-heavy request waits for a turn before answering 503."
    )
    heavy_processes: bool = Field(
        True,
        description="Run CPU-heavy Python work (PDF rendering) in worker processes, so it never slows the "
        "server's other requests; false runs it in the request's thread.",
    )
    metric_downsample_max_scan: int = Field(
        1_000_000,
        ge=1_000,
        le=100_000_000,
        description="Most points one downsampled metric history reads; of a longer series it shows the "
        "latest this many.",
    )

    # --- logging -------------------------------------------------------------------------
    log_level: str = Field("INFO", description="Root log level.")
    log_json: bool = Field(False, description="Write logs, access log included, as JSON lines.")
    access_log: bool = Field(True, description="Log one line per HTTP request.")

    # --- background jobs -----------------------------------------------------------------
    queue_name: str = Field("maestro", description="Name of the job queue (a namespace in Redis).")
    run_worker_in_process: bool = Field(
        True,
        description="`maestro serve` runs a job consumer inside the server process. "
        "Turn off when dedicated `maestro worker` processes do the work.",
    )
    worker_threads: int = Field(2, ge=1, le=64, description="Threads per job consumer.")
    job_heartbeat_interval: float = Field(
        5.0, gt=0, description="Seconds between heartbeats of a running job."
    )
    job_heartbeat_timeout: float = Field(
        60.0, gt=0, description="A running job whose last heartbeat is older than this is considered lost."
    )
    job_reaper_interval: float = Field(
        10.0, gt=0, description="Seconds between sweeps for lost or never-delivered jobs."
    )
    job_max_attempts: int = Field(
        3, ge=1, le=20, description="Attempts before a job whose worker died is marked failed."
    )
    job_redeliver_after: float = Field(
        600.0, gt=0, description="A job still queued after this many seconds is enqueued again."
    )
    job_retention_days: int = Field(
        30, ge=1, description="Finished jobs older than this are removed by the maintenance job."
    )
    maintenance_interval_minutes: int = Field(
        60, ge=0, description="How often consumers run the maintenance job; 0 disables the schedule."
    )
    max_model_bytes: int = Field(
        2 * 1024**3, ge=1, description="Largest model file a version upload may carry, in bytes (2 GiB)."
    )
    max_dataset_bytes: int = Field(
        50 * 1024**2, ge=1, description="Largest dataset an upload may carry, in bytes (50 MiB)."
    )
    max_artifact_bytes: int = Field(
        512 * 1024**2, ge=1, description="Largest run artifact an upload may carry, in bytes (512 MiB)."
    )
    max_metric_batch: int = Field(
        10_000, ge=1, le=100_000, description="Most metric points one logging request may carry."
    )
    stale_upload_hours: float = Field(
        6.0, gt=0, description="Temporary upload files older than this are removed by maintenance."
    )

    # --- model serving -------------------------------------------------------------------
    metrics_token: str | None = Field(
        None,
        min_length=16,
        description="Bearer token Prometheus sends to GET /metrics for every deployment's series; "
        "unset: /metrics serves only totals without deployment names or versions.",
    )
    serving_cache_max_models: int = Field(
        16, ge=1, le=10_000, description="Most loaded models a serving process keeps in memory."
    )
    serving_cache_max_bytes: int = Field(
        2 * 1024**3,
        ge=1024**2,
        description="Memory the loaded models of a serving process may take, in bytes (2 GiB), each counted "
        "at what it was measured to cost. Models a live deployment serves are never dropped; a deploy that "
        "would take them past this limit is refused (409).",
    )
    inference_max_rows: int = Field(
        100, ge=1, le=100_000, description="Most rows one POST /api/v1/inference/{name} request may carry."
    )
    inference_batch_max_rows: int = Field(
        10_000, ge=1, le=1_000_000, description="Most rows one POST /api/v1/inference/{name}/batch may carry."
    )
    inference_max_body_bytes: int = Field(
        32 * 1024**2, ge=1024, description="Largest inference request body, in bytes (32 MiB)."
    )
    prediction_log_sample_rate: float = Field(
        1.0, ge=0.0, le=1.0, description="Fraction of served requests written to the prediction log."
    )
    prediction_log_flush_seconds: float = Field(
        1.0, gt=0, le=60, description="How often buffered prediction logs and request counts are written."
    )
    prediction_log_batch_rows: int = Field(
        500, ge=1, le=100_000, description="Waiting prediction logs that trigger an early write."
    )
    prediction_log_max_pending: int = Field(
        20_000, ge=1, description="Prediction logs held in memory at most; beyond this they are dropped."
    )
    prediction_log_retention_days: int = Field(
        30,
        ge=1,
        description="Prediction logs older than this are deleted by maintenance once folded into "
        "monitoring's hourly profiles, which are kept.",
    )
    monitoring_fold_interval_seconds: int = Field(
        60,
        ge=0,
        description="How often consumers fold new prediction logs into monitoring's hourly profiles "
        "(checked once a minute); 0 turns folding, and so the deletion of old logs, off.",
    )
    monitoring_fold_settle_seconds: float = Field(
        60.0,
        ge=1,
        description="Prediction logs are folded into profiles once this old (or three log flush "
        "intervals, if longer): serving processes write logs in batches, so one may land after a "
        "later one from another process. Lower it only where every clock and writer is close.",
    )
    monitoring_drift_interval_seconds: int = Field(
        3600,
        ge=0,
        description="How often a drift report is stored for each active deployment with reference data, over "
        "the interval just closed (a whole number of hours: profiles are hourly); 0 turns the reports off.",
    )
    monitoring_dataset_drift_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of a deployment's judged input columns that must drift for the dataset as a whole "
        "to count as drifted.",
    )
    warmup_hold_file: Path | None = Field(
        None,
        description="Rehearsals and tests: warming the active deployments at start waits until this "
        "file exists (readiness answers 503 meanwhile). Unset: warming starts at once.",
    )
    deployment_check_seconds: float = Field(
        1.0, gt=0, le=300, description="How often a serving process checks for deployment changes by others."
    )
    auth_cache_seconds: float = Field(
        1.0,
        ge=0,
        le=60,
        description="How long a process reuses a checked API key or session; 0 checks every request.",
    )
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics at GET /metrics.")
    mlflow_default_project: str | None = Field(
        None,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Project id the MLflow API at /api/2.0/mlflow uses when a request names none "
        "(with the X-Maestro-Project header or a /mlflow/{project_id} tracking URI).",
    )

    # --- isolated processes for untrusted model files -------------------------------------------
    model_memory_budget_bytes: int = Field(
        512 * 1024**2,
        ge=32 * 1024**2,
        le=1024**4,
        description="Memory one model may take once loaded and warmed up, in bytes (512 MiB), measured in an "
        "isolated process when its version is uploaded or first loaded; a model over it is refused. Also the "
        "memory limit of the processes that check models and serve XGBoost and LightGBM.",
    )
    model_check_cpu_seconds: int = Field(
        60, ge=1, le=3600, description="CPU seconds the isolated process that checks a model file may use."
    )
    model_load_timeout_seconds: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Seconds an isolated process may take to load, warm up and try a model before it is "
        "stopped.",
    )
    model_process_request_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds an XGBoost or LightGBM model's process may take to answer one request; past it "
        "the process is stopped, the request fails (422) and the next one starts a new process.",
    )
    model_process_max_crashes: int = Field(
        3,
        ge=1,
        le=1000,
        description="Crashes (or time-outs) of a model's process within the crash window after which its "
        "deployment is marked failed and answers 503 until it is deployed again.",
    )
    model_process_crash_window_seconds: float = Field(
        600.0, gt=0, le=86_400, description="The window in which a model process's crashes are counted."
    )
    model_check_trees: bool = Field(
        True,
        description="Check the trees of XGBoost and LightGBM files before the native libraries read them. "
        "Turn off only to test what isolation alone contains.",
    )

    # --- datasets read by jobs, and batch prediction ---------------------------------------------
    dataset_max_rows: int = Field(
        1_000_000,
        ge=1,
        le=1_000_000_000,
        description="Most rows a dataset read by a job (a batch prediction) may have. Parquet is refused "
        "from its metadata before anything is read; every format is counted again while it is read.",
    )
    dataset_max_expanded_bytes: int = Field(
        1024**3,
        ge=1024**2,
        description="Most bytes a dataset may expand to (1 GiB): the real, decompressed size of a workbook's "
        "parts (checked at upload too) and the decoded columns of any format, counted while it is read.",
    )
    batch_job_memory_bytes: int = Field(
        1024**3,
        ge=64 * 1024**2,
        description="Memory budget of the isolated process that runs one batch prediction (dataset, model "
        "and predictions; 1 GiB), also used by other jobs that read a dataset. Past it the job fails.",
    )
    batch_job_cpu_seconds: int = Field(
        1800,
        ge=1,
        le=7 * 86_400,
        description="CPU seconds the isolated process of one batch prediction may use before it is stopped "
        "and the job fails.",
    )
    batch_job_max_output_bytes: int = Field(
        1024**3,
        ge=1024,
        description="Largest predictions file a batch job may write (1 GiB); a job that would write more "
        "fails and stores nothing.",
    )

    # --- webhooks and every other outbound request -----------------------------------------------
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Networks (CIDR, comma-separated, e.g. `10.20.0.0/16,127.0.0.1/32`) that webhooks may "
        "reach although they are private, loopback or otherwise internal. Empty: only public addresses.",
    )
    webhook_allow_http: bool = Field(
        False, description="Allow webhook URLs over plain http; by default only https is accepted."
    )
    webhook_timeout_seconds: float = Field(
        15.0, gt=0, le=60, description="Longest one delivery attempt may take, connecting included."
    )
    webhook_delivery_retention_days: int = Field(
        30,
        ge=1,
        description="Relayed events and finished webhook deliveries (delivered, or failed for good) older "
        "than this are deleted by the cleanup job.",
    )
    webhook_relay_interval_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often job consumers look for new events and due deliveries (a change made in the "
        "same process is relayed at once).",
    )

    # --- alerts ------------------------------------------------------------------------------
    alert_evaluation_interval_seconds: int = Field(
        60,
        ge=0,
        le=86_400,
        description="How often alert rules are evaluated (each rule once per interval across all "
        "processes); 0 turns scheduled evaluation off. Checked once a minute by the scheduler.",
    )
    smtp_host: str | None = Field(None, description="SMTP server email notification channels send through.")
    smtp_port: int = Field(587, ge=1, le=65535, description="Port of the SMTP server.")
    smtp_username: str | None = Field(None, description="SMTP user name; unset: no login.")
    smtp_password: str | None = Field(None, description="SMTP password.")
    smtp_from: str = Field("maestro@localhost", description="Sender address of alert emails.")
    smtp_starttls: bool = Field(True, description="Upgrade SMTP connections with STARTTLS.")
    # --- the standalone model server (`maestro model-server`) ---------------------------------
    model_server_async_result_max_bytes: int = Field(
        1024**3,
        ge=1024**2,
        description="Bytes the results of asynchronous prediction jobs may take on disk in all (1 GiB); "
        "past it new jobs answer 503 with Retry-After.",
    )
    model_server_async_result_quota_bytes: int = Field(
        256 * 1024**2,
        ge=64 * 1024,
        description="Bytes the asynchronous results of one organisation (or one operator key) may take "
        "on disk (256 MiB); past it its new jobs answer 429 with Retry-After.",
    )
    model_server_host: str = Field("127.0.0.1", description="Address `maestro model-server` binds.")
    model_server_port: int = Field(8001, ge=1, le=65535, description="Port `maestro model-server` binds.")
    model_server_models_dir: Path | None = Field(
        None, description="Directory the model server may load model files from by name; unset: none."
    )
    model_server_trust_models_dir: bool = Field(
        False,
        description="Trust files in the models directory: pickles and joblib files load (they run code) "
        "and skops files may hold types outside the allow-list.",
    )
    model_server_preload: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models loaded at start, comma-separated: `model:version`, `model@alias`, `model` "
        "(latest version) or `file:NAME` (models directory); `serve_as=` before any of them names it.",
    )
    model_server_default_model: str | None = Field(
        None,
        description="Name of the model `/api/v1/predict` and `/invocations` use, among those the operator "
        "loaded (preloads, operator keys); default: the first the operator loaded.",
    )
    model_server_api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Operator keys of the model server, comma-separated (at least 16 characters each).",
    )
    model_server_platform_auth: bool = Field(
        True, description="Accept Maestro API keys and access tokens, checked against the platform database."
    )
    model_server_auth_cache_seconds: float = Field(
        1.0,
        ge=0,
        le=300,
        description="How long the model server trusts a checked platform credential or access decision "
        "(never past the credential's expiry): a key revoked on the platform stops working here within "
        "this many seconds; 0 checks every request.",
    )
    model_server_rate_limit_predict: str = Field(
        "100/minute", description="Prediction requests per caller (predict, infer, invocations)."
    )
    model_server_rate_limit_batch: str = Field(
        "10/minute", description="Batch and asynchronous prediction requests per caller."
    )
    model_server_rate_limit_management: str = Field(
        "20/minute", description="Model loads and unloads per caller."
    )
    model_server_max_batch_rows: int = Field(
        1000, ge=1, le=100_000, description="Most rows one synchronous prediction request may carry."
    )
    model_server_async_max_rows: int = Field(
        100_000, ge=1, le=10_000_000, description="Most rows one asynchronous prediction job may carry."
    )
    model_server_async_queue_size: int = Field(
        64, ge=1, le=10_000, description="Asynchronous jobs waiting at most; more answer 503."
    )
    model_server_async_result_seconds: float = Field(
        3600.0, gt=0, description="How long a finished asynchronous job's result is kept."
    )
    model_server_threads: int = Field(
        2, ge=1, le=64, description="Threads running model calls (each model call runs on one)."
    )
    model_server_model_threads: int = Field(
        1, ge=1, le=64, description="Threads inside one model call (onnxruntime intra-op, XGBoost, LightGBM)."
    )
    model_server_max_body_bytes: int = Field(
        64 * 1024**2, ge=1024, description="Largest request body the model server reads, in bytes (64 MiB)."
    )

    @field_validator(
        "cors_origins",
        "model_server_preload",
        "model_server_api_keys",
        "webhook_allowed_networks",
        mode="before",
    )
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator(
        "login_limit_per_ip",
        "login_limit_per_account",
        "refresh_limit_per_ip",
        "model_server_rate_limit_predict",
        "model_server_rate_limit_batch",
        "model_server_rate_limit_management",
    )
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate limit such as 100/minute") from None
        return value

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not a network such as 10.0.0.0/8") from None
        return value

    @field_validator("monitoring_drift_interval_seconds")
    @classmethod
    def _whole_hours(cls, value: int) -> int:
        if value % 3600:
            raise ValueError(
                "must be 0 or a whole number of hours in seconds (3600, 7200, …): profiles are hourly"
            )
        return value

    @field_validator("secret_key", mode="before")
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        """``MAESTRO_SECRET_KEY=`` (empty) means no key, never an empty one."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("log_level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @model_validator(mode="after")
    def _production_is_safe(self) -> Settings:
        if self.secret_key is not None:
            if self.secret_key == DEFAULT_SECRET_KEY and self.environment is not Environment.test:
                raise ValueError(
                    "MAESTRO_SECRET_KEY is the published development key, with which anyone can sign "
                    "tokens; unset it to have a random key generated in <data_dir>/secret_key, or set "
                    "a long random value"
                )
            if len(self.secret_key) < 32:
                if self.environment is Environment.production:
                    raise ValueError("MAESTRO_SECRET_KEY must be at least 32 characters in production")
                logger.warning(
                    "MAESTRO_SECRET_KEY has fewer than 32 characters; a short key can be guessed "
                    "(production refuses it)"
                )
        if any(len(key) < 16 for key in self.model_server_api_keys):
            raise ValueError("every MAESTRO_MODEL_SERVER_API_KEYS entry needs at least 16 characters")
        if self.job_heartbeat_timeout <= self.job_heartbeat_interval:
            raise ValueError("MAESTRO_JOB_HEARTBEAT_TIMEOUT must exceed MAESTRO_JOB_HEARTBEAT_INTERVAL")
        return self

    # --- derived values ------------------------------------------------------------------
    @cached_property
    def resolved_database_url(self) -> str:
        url = self.database_url or f"sqlite:///{(self.data_dir / 'maestro.db').resolve()}"
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+psycopg://" + url[len(plain) :]
        return url

    @property
    def uses_embedded_database(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    @cached_property
    def resolved_storage_url(self) -> str:
        return self.storage_url or str((self.data_dir / "artifacts").resolve())

    @property
    def queue_file(self) -> Path:
        return self.data_dir / "queue.db"

    @property
    def secret_key_file(self) -> Path:
        return self.data_dir / SECRET_KEY_FILE

    @property
    def signing_key(self) -> str:
        """The installation's secret, which everything that signs or encrypts uses:
        ``MAESTRO_SECRET_KEY``, or else the key in ``<data_dir>/secret_key``, generated
        by whichever process of the installation needs it first (and read once per
        process). Raises ``SecretKeyUnavailable`` when neither can be had."""
        if self.secret_key is not None:
            return self.secret_key
        return _key_in_file(self.secret_key_file)


def generate_secret_key() -> str:
    """A value suitable for MAESTRO_SECRET_KEY."""
    return secrets.token_urlsafe(48)


class SecretKeyUnavailable(RuntimeError):
    """No MAESTRO_SECRET_KEY, and no usable key file in the data directory."""


_SET_THE_KEY = (
    "set MAESTRO_SECRET_KEY to a long random value instead (the same on every host of this installation)"
)


def _read_secret_key(path: Path) -> str:
    key = path.read_text(encoding="utf-8").strip()
    if len(key) < 32:
        raise SecretKeyUnavailable(
            f"{path} holds no usable key (fewer than 32 characters); delete it to have a new one "
            f"generated, or {_SET_THE_KEY}"
        )
    if path.stat().st_mode & 0o077:
        logger.warning("%s can be read by other users of this machine; make it private: chmod 600", path)
    return key


@lru_cache(maxsize=64)
def _key_in_file(path: Path) -> str:
    return load_or_create_secret_key(path)


def load_or_create_secret_key(path: Path) -> str:
    """The key stored at ``path``, created on first use: written in full to a private
    scratch file (mode 0600), then linked into place, which fails if another process
    got there first. Whoever loses that race reads the winner's key, so every process
    that uses one data directory ends up with the same key, and no process ever reads
    a half-written file."""
    try:
        return _read_secret_key(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SecretKeyUnavailable(f"cannot read {path} ({exc.strerror}); {_SET_THE_KEY}") from exc
    created = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(generate_secret_key() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(scratch, path)
                created = True
            except FileExistsError:
                pass
        finally:
            scratch.unlink(missing_ok=True)
    except OSError as exc:
        raise SecretKeyUnavailable(
            f"MAESTRO_SECRET_KEY is not set and {path} cannot be created ({exc.strerror or exc}); "
            f"{_SET_THE_KEY}"
        ) from exc
    if created:
        logger.warning(
            "generated a secret key in %s; every process and host of this installation must see "
            "this file, or share one MAESTRO_SECRET_KEY",
            path,
        )
    return _read_secret_key(path)
