"""The ``maestro`` command (also ``python -m maestro``)."""

from __future__ import annotations

import json
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from maestro import __version__

app = typer.Typer(
    help="Maestro, a self-hosted MLOps platform.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
jobs_app = typer.Typer(help="Background jobs.", no_args_is_help=True)
users_app = typer.Typer(help="User accounts.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(jobs_app, name="jobs")
app.add_typer(users_app, name="users")


def _settings(**overrides: Any) -> Any:
    from pydantic import ValidationError

    from maestro.config import Settings

    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        for error in exc.errors():
            typer.secho(f"configuration error: {error['msg']}", err=True, fg="red")
        raise typer.Exit(2) from exc


def _require_secret_key(settings: Any) -> None:
    """For processes that sign or check credentials: the secret key is read (or
    generated, on the installation's first start) before anything is served."""
    from maestro.config import SecretKeyUnavailable

    try:
        settings.signing_key  # noqa: B018 - read now, so a missing key stops the start
    except SecretKeyUnavailable as exc:
        typer.secho(f"configuration error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from exc


@app.command()
def version() -> None:
    """Print Maestro's version."""
    typer.echo(__version__)


class EventLoop(StrEnum):
    auto = "auto"
    asyncio = "asyncio"
    uvloop = "uvloop"


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind [default: MAESTRO_HOST or 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind [default: MAESTRO_PORT or 8000].")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes [default: MAESTRO_WORKERS or 1].")
    ] = None,
    reload: Annotated[bool, typer.Option(help="Restart when source files change (development).")] = False,
    loop: Annotated[
        EventLoop, typer.Option(help="Event loop; auto picks uvloop when installed.")
    ] = EventLoop.auto,
    migrate: Annotated[
        bool | None,
        typer.Option(
            "--migrate/--no-migrate",
            help="Apply database migrations before serving [default: only on the embedded database].",
        ),
    ] = None,
) -> None:
    """Run the API server (and, unless disabled, a job consumer inside it)."""
    from maestro import server
    from maestro.logs import configure_logging

    settings = _settings()
    host, port = host or settings.host, port or settings.port
    busy = server.port_in_use(host, port)
    if busy:  # said first, alone: nothing was started or written yet
        typer.secho(
            f"cannot listen on {host}:{port}: {busy}; choose another port with "
            f"MAESTRO_PORT={_another_port(port)} or --port {_another_port(port)}",
            err=True,
            fg="red",
        )
        raise typer.Exit(1)
    configure_logging(settings)
    _require_secret_key(settings)
    if settings.uses_embedded_database if migrate is None else migrate:
        with server.collector_paused():  # loads every table's module, as the app would
            from maestro.migrations import upgrade_if_behind

            upgrade_if_behind(settings.resolved_database_url)
    workers = workers or settings.workers
    if workers == 1 and not reload:
        with server.collector_paused():  # this process serves: load the app now, quickly
            import maestro.app  # noqa: F401
    server.run(settings, host=host, port=port, workers=workers, reload=reload, loop=str(loop))


def _another_port(port: int) -> int:
    return port + 1 if port < 65535 else port - 1


@app.command()
def worker(
    threads: Annotated[
        int | None, typer.Option(min=1, help="Jobs run at once [default: MAESTRO_WORKER_THREADS].")
    ] = None,
) -> None:
    """Run a job consumer; start as many as the work needs, on any machine that
    reaches the same database, queue and artifact store."""
    from maestro.jobs.queue import run_worker
    from maestro.logs import configure_logging

    settings = _settings(worker_threads=threads)
    configure_logging(settings)
    _require_secret_key(settings)
    queue = _queue(settings)
    run_worker(queue)


@app.command("model-server")
def model_server(
    host: Annotated[
        str | None, typer.Option(help="Address to bind [default: MAESTRO_MODEL_SERVER_HOST or 127.0.0.1].")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to bind [default: MAESTRO_MODEL_SERVER_PORT or 8001].")
    ] = None,
    loop: Annotated[
        EventLoop, typer.Option(help="Event loop; auto picks uvloop when installed.")
    ] = EventLoop.auto,
) -> None:
    """Run the standalone model server: loaded models answer Maestro's prediction
    routes, the Open Inference Protocol (/v2) and MLflow's scoring protocol."""
    from maestro.logs import configure_logging
    from maestro.model_server import app as server

    settings = _settings()
    configure_logging(settings)
    _require_secret_key(settings)
    server.run(
        settings,
        host=host or settings.model_server_host,
        port=port or settings.model_server_port,
        loop=str(loop),
    )


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply migrations up to REVISION."""
    from maestro.migrations import current_revision, upgrade

    settings = _settings()
    upgrade(settings.resolved_database_url, revision)
    typer.echo(f"database at revision {current_revision(settings.resolved_database_url)}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's current revision."""
    from maestro.migrations import current_revision

    typer.echo(current_revision(_settings().resolved_database_url) or "empty (run `maestro db upgrade`)")


class OpenAPIFormat(StrEnum):
    json = "json"
    yaml = "yaml"


@app.command()
def openapi(
    format: Annotated[OpenAPIFormat, typer.Option("--format", "-f")] = OpenAPIFormat.json,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to a file instead of stdout.")
    ] = None,
) -> None:
    """Print the OpenAPI document without starting a server."""
    import tempfile

    import yaml

    from maestro.app import create_app

    with tempfile.TemporaryDirectory() as scratch:
        document = create_app(_settings(data_dir=Path(scratch), run_worker_in_process=False)).openapi()
    text = (
        json.dumps(document, indent=2)
        if format is OpenAPIFormat.json
        else yaml.safe_dump(document, sort_keys=False)
    )
    if output:
        output.write_text(text + "\n")
    else:
        sys.stdout.write(text + "\n")


def _queue(settings: Any) -> Any:
    from maestro.db import Database
    from maestro.domains import register_all
    from maestro.jobs.queue import JobQueue
    from maestro.storage import ArtifactStore

    register_all()  # jobs run here find every domain's file sources and counters
    return JobQueue(settings, Database(settings), ArtifactStore(settings.resolved_storage_url))


def _submit_and_report(kind: str, params: dict[str, Any], wait: bool) -> None:
    from maestro.jobs.schemas import JobRead
    from maestro.jobs.service import get_job

    queue = _queue(_settings())
    with queue.database.session() as session:
        job_id = queue.submit(session, kind, params).id
    typer.echo(f"submitted {job_id}")
    while True:
        with queue.database.session(write=False) as session:
            job = JobRead.model_validate(get_job(session, job_id))
        if not wait or job.status in ("succeeded", "failed"):
            typer.echo(job.model_dump_json(indent=2))
            if job.status == "failed":
                raise typer.Exit(1)
            return
        time.sleep(0.5)


@jobs_app.command("cleanup")
def jobs_cleanup(wait: Annotated[bool, typer.Option(help="Wait for the job to finish.")] = False) -> None:
    """Queue the maintenance job (stale uploads, old finished jobs)."""
    from maestro.jobs.maintenance import CLEANUP

    _submit_and_report(CLEANUP, {}, wait)


@jobs_app.command("probe")
def jobs_probe(
    seconds: Annotated[float, typer.Option(min=0, max=300, help="How long the probe job runs.")] = 1.0,
    wait: Annotated[bool, typer.Option(help="Wait for the job to finish.")] = True,
) -> None:
    """Queue a job that does nothing but report progress: checks that workers run jobs."""
    from maestro.jobs.maintenance import PROBE

    _submit_and_report(PROBE, {"duration_seconds": seconds, "steps": 10}, wait)


@jobs_app.command("show")
def jobs_show(job_id: str) -> None:
    """Print a job's status, progress and result."""
    from maestro.errors import NotFound
    from maestro.jobs.schemas import JobRead
    from maestro.jobs.service import get_job

    queue = _queue(_settings())
    try:
        with queue.database.session(write=False) as session:
            typer.echo(JobRead.model_validate(get_job(session, job_id)).model_dump_json(indent=2))
    except NotFound as exc:
        typer.secho(exc.message, err=True, fg="red")
        raise typer.Exit(1) from exc


def _database(settings: Any) -> Any:
    """The database of the commands that work on it directly. It must exist and be
    migrated: a missing or empty one is said in one line, and never created here."""
    from sqlalchemy.exc import SQLAlchemyError

    from maestro.db import Database, shown_url
    from maestro.migrations import current_revision

    url = settings.resolved_database_url
    try:
        revision = current_revision(url)
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        typer.secho(f"The database {shown_url(url)} cannot be reached: {reason}", err=True, fg="red")
        raise typer.Exit(1) from exc
    if revision is None:
        typer.secho(
            f"The database {shown_url(url)} has no Maestro tables yet: run `maestro db upgrade` "
            "(or `make serve`) with the same settings first",
            err=True,
            fg="red",
        )
        raise typer.Exit(1)
    return Database(settings, create=False)


def _checked_password(password: str) -> str:
    if len(password) < 8:
        typer.secho("the password must have at least 8 characters", err=True, fg="red")
        raise typer.Exit(2)
    return password


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="Sign-in email.")],
    password: Annotated[
        str,
        typer.Option(prompt=True, hide_input=True, confirmation_prompt=True, help="At least 8 characters."),
    ],
    admin: Annotated[
        bool, typer.Option(help="Make the user an instance administrator (plans, accounts, sign-ins).")
    ] = False,
    org_admin: Annotated[
        bool, typer.Option(help="Make the user admin of a new organisation (--organization).")
    ] = False,
    organization: Annotated[
        str | None,
        typer.Option(help="Name of that organisation [default: Default]; implies --org-admin."),
    ] = None,
    first_name: str = "",
    last_name: str = "",
) -> None:
    """Create a user (even when public registration is closed)."""
    from pydantic import TypeAdapter, ValidationError

    from maestro.errors import Conflict
    from maestro.identity import service
    from maestro.identity.schemas import Email

    try:
        email = TypeAdapter(Email).validate_python(email)
    except ValidationError as exc:
        typer.secho(f"not a valid email address: {email}", err=True, fg="red")
        raise typer.Exit(2) from exc
    settings = _settings()
    try:
        with _database(settings).session() as session:
            user = service.create_user(
                session,
                settings,
                email=email,
                password=_checked_password(password),
                first_name=first_name,
                last_name=last_name,
            )
            line = f"created {user.id} <{user.email}>"
            if admin:
                user.is_instance_admin = True
                line += ", instance administrator"
            if org_admin or organization is not None:
                org = service.create_organization(
                    session, settings, name=organization or "Default", owner=user
                )
                line += f", admin of {org.id} ({org.name})"
    except Conflict as exc:
        typer.secho(exc.message, err=True, fg="red")
        raise typer.Exit(1) from exc
    typer.echo(line)


@users_app.command("reset-password")
def users_reset_password(
    email: Annotated[str, typer.Option(help="The user's email.")],
    password: Annotated[
        str,
        typer.Option(prompt=True, hide_input=True, confirmation_prompt=True, help="At least 8 characters."),
    ],
) -> None:
    """Set a new password and end every session of the user."""
    from sqlalchemy import select

    from maestro.identity import service
    from maestro.identity.models import User

    settings = _settings()
    with _database(settings).session() as session:
        user = session.scalar(select(User).where(User.email == email.strip().lower()))
        if user is None:
            typer.secho(f"no user with email {email}", err=True, fg="red")
            raise typer.Exit(1)
        service.set_password(session, settings, user, _checked_password(password))
    typer.echo(f"password reset for {user.email}; all sessions ended")


# --- instance administration: `maestro admin …`, directly on the database -------------------
admin_app = typer.Typer(
    help="Instance administration: organisations' plans, accounts, failed sign-ins.", no_args_is_help=True
)
app.add_typer(admin_app, name="admin")


def _fail(message: str, code: int = 1) -> None:
    typer.secho(message, err=True, fg="red")
    raise typer.Exit(code)


@admin_app.command("orgs")
def admin_orgs() -> None:
    """List every organisation with its plan and member count."""
    from sqlalchemy import select

    from maestro.identity.models import Organization
    from maestro.organizations.instance_admin import organization_admin_reads

    settings = _settings()
    with _database(settings).session(write=False) as session:
        organizations = session.scalars(select(Organization).order_by(Organization.created_at)).all()
        for row in organization_admin_reads(session, organizations):
            typer.echo(f"{row.id}\t{row.subscription_plan.value}\t{row.member_count} members\t{row.name}")


@admin_app.command("set-plan")
def admin_set_plan(
    organization: Annotated[str, typer.Argument(help="The organisation's id or slug.")],
    plan: Annotated[str, typer.Argument(help="unlimited, free, professional or enterprise.")],
) -> None:
    """Put an organisation on another plan. Running servers apply it within
    MAESTRO_AUTH_CACHE_SECONDS."""
    from sqlalchemy import or_, select

    from maestro.identity.models import Organization, Plan
    from maestro.organizations.instance_admin import change_plan

    if plan not in {known.value for known in Plan}:
        _fail(f"unknown plan {plan!r}; use one of: {', '.join(known.value for known in Plan)}", 2)
    settings = _settings()
    with _database(settings).session() as session:
        organization_id = session.scalar(
            select(Organization.id).where(
                or_(Organization.id == organization, Organization.slug == organization)
            )
        )
        if organization_id is None:
            _fail(f"no organisation {organization}")
        changed = change_plan(session, str(organization_id), Plan(plan))
        typer.echo(f"{changed.id} ({changed.name}) is now on the {changed.subscription_plan} plan")


@admin_app.command("users")
def admin_users() -> None:
    """List every account: id, email, active or not, instance administrator or not."""
    from sqlalchemy import select

    from maestro.identity.models import User

    settings = _settings()
    with _database(settings).session(write=False) as session:
        for user in session.scalars(select(User).order_by(User.created_at)):
            state = "active" if user.is_active else "deactivated"
            role = "\tinstance administrator" if user.is_instance_admin else ""
            typer.echo(f"{user.id}\t{user.email}\t{state}{role}")


def _set_active(email: str, active: bool) -> None:
    from sqlalchemy import select

    from maestro.identity.administration import set_active
    from maestro.identity.models import User

    settings = _settings()
    with _database(settings).session() as session:
        user_id = session.scalar(select(User.id).where(User.email == email.strip().lower()))
        if user_id is None:
            _fail(f"no user with email {email}")
        user = set_active(session, None, str(user_id), active)
        typer.echo(f"{user.email} is now {'active' if active else 'deactivated'}")


@admin_app.command("deactivate")
def admin_deactivate(email: Annotated[str, typer.Argument(help="The account's email.")]) -> None:
    """Deactivate an account: its sessions end and the API keys it created stop working
    (on running servers within MAESTRO_AUTH_CACHE_SECONDS)."""
    _set_active(email, False)


@admin_app.command("reactivate")
def admin_reactivate(email: Annotated[str, typer.Argument(help="The account's email.")]) -> None:
    """Reactivate an account: it may sign in again, and its API keys work again."""
    _set_active(email, True)


@admin_app.command("failed-sign-ins")
def admin_failed_sign_ins(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many, newest first.")] = 50,
) -> None:
    """Print the latest refused sign-ins: time, client address, reason, email as typed."""
    from sqlalchemy import select

    from maestro.identity.models import FailedSignIn

    settings = _settings()
    with _database(settings).session(write=False) as session:
        rows = session.scalars(
            select(FailedSignIn).order_by(FailedSignIn.created_at.desc(), FailedSignIn.id.desc()).limit(limit)
        )
        for row in rows:
            typer.echo(f"{row.created_at.isoformat()}\t{row.ip or '-'}\t{row.reason}\t{row.email!r}")


def main() -> None:
    app()
