"""The whole permission matrix, generated from one table.

Every route of the API has a row: the status each kind of caller gets. A route
added without a row fails ``test_every_route_has_a_rule``, so nobody can ship an
endpoint whose access rules were never decided. Callers are refused before they
change anything, so each row runs its refused callers against one world and every
caller that succeeds in changing state against a fresh one.
"""

from __future__ import annotations

import functools
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from maestro.identity import security
from maestro.jobs.maintenance import PROBE
from maestro.organizations.models import Invitation
from tests.factories import Actor, Factory, World

# anonymous, organisation viewer/developer/admin, admin of another organisation,
# an API key of the organisation holding the row's scope, and one holding none.
PRINCIPALS = ("anonymous", "viewer", "developer", "admin", "other_admin", "key", "key_none")
_unique = itertools.count()


@dataclass
class Scene:
    """Everything a route of the matrix may act on, around the suite's ``World``."""

    org: str
    other_org: str
    actors: dict[str, Actor]
    target: Actor  # a member that role changes and removals act on
    project: str  # visibility "organization"
    job: str
    api_key_id: str
    invitation_token: str
    keys: dict[str, str] = field(default_factory=dict)
    model_id: str = ""  # a model in the project, with one tag
    model_name: str = ""
    tag_key: str = "team"
    version: str = "1.0.0"  # a version of the model, with a small file
    alias: str = "champion"  # an alias of the model naming that version
    file_id: str = ""  # an uploaded dataset in the project
    experiment_id: str = ""  # an experiment in the project, with a running run
    run_id: str = ""  # that run, with a parameter, a metric and an artifact
    artifact_id: str = ""
    metric: str = "accuracy"
    deployment_id: str = ""  # a deployment of a small ONNX model in the project, serving version 2 of 2
    deployment_name: str = ""
    serving_version_ids: tuple[str, str] = ("", "")
    batch_job_id: str = ""  # a finished batch prediction of that deployment, with its result file
    invitation_id: str = ""  # the pending invitation whose token is invitation_token
    webhook_id: str = ""  # a webhook of the organisation (to an address the guard refuses) with one delivery
    delivery_id: str = ""
    channel_id: str = ""  # a webhook notification channel (to an address the guard refuses)
    rule_id: str = ""  # an alert rule of the deployment, with a firing alert
    alert_id: str = ""
    silence_id: str = ""

    def path_params(self) -> dict[str, str]:
        return {
            "org_id": self.org,
            "project_id": self.project,
            "user_id": self.target.user_id,
            "job_id": self.job,
            "key_id": self.api_key_id,
            "model_id": self.model_id,
            "model_name": self.model_name,
            "key": self.tag_key,
            "version": self.version,
            "alias": self.alias,
            "file_id": self.file_id,
            "experiment_id": self.experiment_id,
            "run_id": self.run_id,
            "artifact_id": self.artifact_id,
            "name": self.metric,
            "deployment_id": self.deployment_id,
            "deployment_name": self.deployment_name,
            "batch_job_id": self.batch_job_id,
            "invitation_id": self.invitation_id,
            "webhook_id": self.webhook_id,
            "delivery_id": self.delivery_id,
            "channel_id": self.channel_id,
            "rule_id": self.rule_id,
            "alert_id": self.alert_id,
            "silence_id": self.silence_id,
        }


def build_world(app: FastAPI, scope: tuple[str, str] | None) -> Scene:
    factory = Factory(app)
    people = World.build(factory)
    org, other_org, project = people.org, people.other_org, people.project
    actors = {"viewer": people.viewer, "developer": people.developer, "admin": people.admin}
    actors["other_admin"] = people.outsider
    target = people.acme.user("viewer")
    factory.add_project_member(project, target, "viewer")
    with app.state.database.session() as session:
        job = app.state.queue.submit(session, PROBE, {}, organization_id=org).id
        token = security.new_invitation_token()
        from maestro.db import utcnow

        invitation = Invitation(
            organization_id=org,
            email=f"invitee{next(_unique)}@example.com",
            role="viewer",
            token_hash=security.sha256_hex(token),
            expires_at=utcnow().replace(year=utcnow().year + 1),
        )
        session.add(invitation)
        session.flush()
        invitation_id = invitation.id
    managed_key = factory.api_key(org, {})
    with app.state.database.session(write=False) as session:
        from sqlalchemy import select

        from maestro.identity.models import ApiKey

        api_key_id = session.scalar(
            select(ApiKey.id).where(ApiKey.key_hash == security.sha256_hex(managed_key))
        )
    world = Scene(
        org, other_org, actors, target, project, job, api_key_id, token, invitation_id=invitation_id
    )
    with app.state.database.session() as session:
        from maestro.registry.models import ModelTag, RegisteredModel

        model = RegisteredModel(
            organization_id=org,
            project_id=project,
            name=f"World model {next(_unique)}",
            model_type="classification",
            created_by_id=actors["admin"].user_id,
        )
        session.add(model)
        session.flush()
        session.add(ModelTag(model_id=model.id, key=world.tag_key, value="growth"))
        world.model_id, world.model_name = model.id, model.name
        from maestro.registry.models import ModelAlias, ModelVersion, VersionTag

        stored = app.state.store.put_bytes("models/world", b"model bytes")
        version = ModelVersion(
            model_id=model.id,
            organization_id=org,
            version=world.version,
            file_key=stored.key,
            file_size=stored.size,
            sha256=stored.sha256,
            format="other",
        )
        session.add(version)
        session.flush()
        session.add(ModelAlias(model_id=model.id, alias=world.alias, version_id=version.id))
        session.add(VersionTag(version_id=version.id, key=world.tag_key, value="growth"))
    with app.state.database.session() as session:
        from maestro.files.models import StoredFile

        stored = app.state.store.put_bytes("files/world", b"a,b\n1,2\n")
        stored_file = StoredFile(
            organization_id=org,
            project_id=project,
            kind="dataset",
            filename="world.csv",
            format="csv",
            content_type="text/csv",
            storage_key=stored.key,
            size=stored.size,
            sha256=stored.sha256,
        )
        session.add(stored_file)
        session.flush()
        world.file_id = stored_file.id
    with app.state.database.session() as session:
        from maestro.tracking.models import Experiment, LatestMetric, MetricPoint, Run, RunArtifact, RunParam

        experiment = Experiment(
            organization_id=org, project_id=project, name=f"World experiment {next(_unique)}", config={}
        )
        session.add(experiment)
        session.flush()
        run = Run(experiment_id=experiment.id, organization_id=org, name="world run", start_time=1)
        session.add(run)
        session.flush()
        session.add(RunParam(run_id=run.id, key="lr", value="0.1"))
        session.add(MetricPoint(run_id=run.id, key=world.metric, value=0.9, timestamp=1, step=0))
        session.add(
            LatestMetric(
                run_id=run.id, key=world.metric, experiment_id=experiment.id, value=0.9, timestamp=1, step=0
            )
        )
        stored = app.state.store.put_bytes("runs/world", b"plot bytes")
        artifact = RunArtifact(
            run_id=run.id,
            organization_id=org,
            path="plots/roc.png",
            storage_key=stored.key,
            size=stored.size,
            sha256=stored.sha256,
        )
        session.add(artifact)
        session.flush()
        world.experiment_id, world.run_id, world.artifact_id = experiment.id, run.id, artifact.id
    add_deployment(app, world)
    add_webhook(app, world)
    add_alerts(app, world)
    world.keys["key"] = factory.api_key(org, {scope[0]: [scope[1]]} if scope else {})
    world.keys["key_none"] = factory.api_key(org, {})
    return world


@functools.cache
def linear_onnx(weight: float) -> bytes:
    """A two-feature ONNX model answering ``weight * (x0 + x1)``."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.full((2, 1), weight, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])],
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])],
        initializer=[weights],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


SERVING_SCHEMA = {"inputs": [{"name": "x0", "type": "float"}, {"name": "x1", "type": "float"}]}


def add_deployment(app: FastAPI, world: Scene) -> None:
    """Its own model with two ONNX versions, a deployment that served the first and now
    serves the second, and a finished batch job of it."""
    from maestro.deployments.batch_jobs import KIND
    from maestro.deployments.models import Deployment, DeploymentRevision
    from maestro.files.models import StoredFile
    from maestro.jobs.models import Job
    from maestro.registry.models import ModelVersion, RegisteredModel

    with app.state.database.session() as session:
        model = RegisteredModel(
            organization_id=world.org,
            project_id=world.project,
            name=f"Serving model {next(_unique)}",
            model_type="regression",
        )
        session.add(model)
        session.flush()
        versions = []
        for number, weight in ((0, 1.0), (1, 2.0)):
            stored = app.state.store.put_bytes("models/world", linear_onnx(weight))
            version = ModelVersion(
                model_id=model.id,
                organization_id=world.org,
                version=f"2.0.{number}",
                file_key=stored.key,
                file_size=stored.size,
                sha256=stored.sha256,
                format="onnx",
                model_schema=SERVING_SCHEMA,
            )
            session.add(version)
            session.flush()
            versions.append(version.id)
        deployment = Deployment(
            organization_id=world.org,
            project_id=world.project,
            name=f"world-{next(_unique)}",
            model_id=model.id,
            model_version_id=versions[1],
        )
        session.add(deployment)
        session.flush()
        for action, version_id, version_label in (
            ("created", versions[0], "2.0.0"),
            ("deployed", versions[1], "2.0.1"),
        ):
            session.add(
                DeploymentRevision(
                    deployment_id=deployment.id,
                    action=action,
                    model_version_id=version_id,
                    version=version_label,
                    actor_type="user",
                    actor_id=world.actors["admin"].user_id,
                )
            )
        stored = app.state.store.put_bytes("files/world", b"x0,x1,prediction\n1,2,6\n")
        result = StoredFile(
            organization_id=world.org,
            project_id=world.project,
            kind="dataset",
            filename="predictions.csv",
            format="csv",
            content_type="text/csv",
            storage_key=stored.key,
            size=stored.size,
            sha256=stored.sha256,
        )
        session.add(result)
        session.flush()
        job = Job(
            kind=KIND,
            organization_id=world.org,
            project_id=world.project,
            status="succeeded",
            params={"deployment_id": deployment.id},
            result={"file_id": result.id},
        )
        session.add(job)
        session.flush()
        world.deployment_id, world.deployment_name = deployment.id, deployment.name
        world.serving_version_ids = (versions[0], versions[1])
        world.batch_job_id = job.id


def add_webhook(app: FastAPI, world: Scene) -> None:
    """A webhook to an address the outbound guard refuses (so its test answers 422 and
    nothing is sent), with one failed delivery."""
    from maestro.webhooks import signing
    from maestro.webhooks.models import Webhook, WebhookDelivery

    with app.state.database.session() as session:
        webhook = Webhook(
            organization_id=world.org,
            name="World webhook",
            url="https://10.0.0.1/hook",
            events=["model.created"],
            secret_sealed=signing.seal(app.state.settings, signing.generate_secret()),
        )
        session.add(webhook)
        session.flush()
        row = WebhookDelivery(
            webhook_id=webhook.id,
            organization_id=world.org,
            event_id=f"evt_world{next(_unique)}",
            event_type="model.created",
            body="{}",
            status="failed",
            attempts=10,
        )
        session.add(row)
        session.flush()
        world.webhook_id, world.delivery_id = webhook.id, row.id


def add_alerts(app: FastAPI, world: Scene) -> None:
    """A notification channel to an address the guard refuses (its test answers that it
    was not delivered), an alert rule of the deployment with a firing alert, and a silence."""
    from datetime import timedelta

    from maestro.alerts.models import Alert, AlertRule, NotificationChannel, Silence
    from maestro.db import utcnow
    from maestro.webhooks import signing

    with app.state.database.session() as session:
        channel = NotificationChannel(
            organization_id=world.org,
            name="World channel",
            kind="webhook",
            url="https://10.0.0.1/hook",
            secret_sealed=signing.seal(app.state.settings, signing.generate_secret()),
        )
        rule = AlertRule(
            organization_id=world.org,
            project_id=world.project,
            deployment_id=world.deployment_id,
            name="Traffic stopped",
            alert_type="traffic",
            metric_name="request_count",
            threshold=1,
            operator="less_than",
            severity="high",
            notification_channels=[],
            window_seconds=3600,
            for_seconds=0,
            repeat_interval_seconds=3600,
            min_samples=0,
            state="firing",
        )
        session.add_all([channel, rule])
        session.flush()
        alert = Alert(
            organization_id=world.org,
            project_id=world.project,
            rule_id=rule.id,
            deployment_id=world.deployment_id,
            rule_name=rule.name,
            metric_name=rule.metric_name,
            operator=rule.operator,
            threshold=rule.threshold,
            severity=rule.severity,
            value=0.0,
            timeline=[],
        )
        silence = Silence(organization_id=world.org, rule_id=rule.id, ends_at=utcnow() + timedelta(days=1))
        session.add_all([alert, silence])
        session.flush()
        rule.current_alert_id = alert.id
        world.channel_id, world.rule_id, world.alert_id, world.silence_id = (
            channel.id,
            rule.id,
            alert.id,
            silence.id,
        )


def headers_for(world: Scene, principal: str) -> dict[str, str]:
    if principal == "anonymous":
        return {}
    if principal in world.keys:
        return {"X-API-Key": world.keys[principal]}
    return world.actors[principal].headers


def fresh_email(_: Scene) -> dict[str, Any]:
    return {"email": f"new{uuid.uuid4().hex[:10]}@example.com", "password": "long enough password"}


@dataclass(frozen=True)
class Rule:
    method: str
    path: str
    expect: str  # statuses in PRINCIPALS order
    scope: tuple[str, str] | None = None  # what the "key" principal is granted
    body: Callable[[Scene], Any] | None = None
    files: Callable[[Scene], Any] | None = None  # a multipart/form-data body instead
    data: Callable[[Scene], Any] | None = None  # form fields sent before the files

    def statuses(self) -> dict[str, int]:
        codes = [int(code) for code in self.expect.split()]
        assert len(codes) == len(PRINCIPALS), f"{self.method} {self.path}: one status per principal"
        return dict(zip(PRINCIPALS, codes, strict=True))


# The experiment-tracking rows: what reading, creating and changing answer, and their paths.
READ = "401 200 200 200 404 200 403"
CREATE = "401 403 201 201 404 201 403"
CHANGE = "401 403 200 200 404 200 403"
EXPERIMENT = "/experiments/{experiment_id}"
RUN = "/experiments/{experiment_id}/runs/{run_id}"


def new_experiment(_: Scene) -> dict[str, Any]:
    return {"name": f"Experiment {next(_unique)}"}


def new_tracked_experiment(world: Scene) -> dict[str, Any]:
    return {"project_id": world.project, "name": f"experiment-{next(_unique)}"}


def metric_batch(_: Scene) -> dict[str, Any]:
    return {"metrics": [{"name": "loss", "value": 0.5, "step": 1}]}


def artifact_file(_: Scene) -> dict[str, Any]:
    return {"file": ("roc.png", b"png bytes")}


# The deployment rows: reading (deployments or inference), creating and changing.
DEPLOY_READ = "401 200 200 200 404 200 403"
# Deploying a version (creating, rolling back) also needs models: read, which a key
# holding only deployments: write lacks.
DEPLOY_CREATE = "401 403 201 201 404 403 403"
DEPLOY_CHANGE = "401 403 200 200 404 200 403"
DEPLOY_ROLLBACK = "401 403 200 200 404 403 403"
# Submitting a batch job stores files in the project: write access to inference.
DEPLOY_SUBMIT = "401 403 202 202 404 202 403"
DEPLOYMENTS = "/projects/{project_id}/deployments"
DEPLOYMENT = "/deployments/{deployment_id}"
INFERENCE = "/inference/{deployment_name}"
BATCH_RESULT = f"{INFERENCE}/batch-jobs/{{batch_job_id}}/result"
MONITORING = f"{DEPLOYMENT}/monitoring"
# The world's deployment has no reference data: whoever may read drift, or ask for a
# report (monitoring: write), is told so (409).
NO_REFERENCE_READ = "401 409 409 409 404 409 403"
NO_REFERENCE_ASK = "401 403 409 409 404 409 403"


def new_deployment(world: Scene) -> dict[str, Any]:
    return {"name": f"matrix-{next(_unique)}", "model_version_id": world.serving_version_ids[0]}


def instances(_: Scene) -> dict[str, Any]:
    return {"instances": [{"x0": 1.0, "x1": 2.0}]}


def labels(_: Scene) -> dict[str, Any]:
    return {"items": [{"prediction_id": "pred_never_served", "actual": 1}]}


def traffic_window(_: Scene) -> dict[str, Any]:
    return {"reference_start": "2025-06-01T10:00:00Z", "reference_end": "2025-06-01T11:00:00Z"}


def segment_column(_: Scene) -> dict[str, Any]:
    return {"column": "x0"}


# The name-addressed registry rows: the same rules as the routes they stand beside.
BY_NAME_VERSION = "/models/{model_id}/versions/{version}"
MODEL_CARD = "/model-cards/{model_id}/versions/{version}"
DELETED = "401 403 204 204 404 204 403"


WEBHOOK = "/webhooks/{webhook_id}"


def new_webhook(_: Scene) -> dict[str, Any]:
    return {"name": f"hook {next(_unique)}", "url": "https://93.184.215.14/hook", "events": ["model.created"]}


def new_alert_rule(_: Scene) -> dict[str, Any]:
    return {"metric_name": "request_count", "threshold": 1, "operator": "less_than"}


def new_silence(world: Scene) -> dict[str, Any]:
    return {"rule_id": world.rule_id, "ends_at": "2999-01-01T00:00:00Z"}


def new_channel(_: Scene) -> dict[str, Any]:
    return {"name": f"channel {next(_unique)}", "kind": "webhook", "url": "https://93.184.215.14/hook"}


ALERT = "/alerts/{alert_id}"
ALERT_RULE = "/alert-rules/{rule_id}"
CHANNEL = "/notification-channels/{channel_id}"


def recover_since(_: Scene) -> dict[str, Any]:
    return {"since": "2020-01-01T00:00:00Z"}


def registered_by_name(world: Scene) -> dict[str, Any]:
    return {"name": f"by-name-{next(_unique)}", "project_id": world.project, "tags": {"team": "growth"}}


RULES = [
    # --- server ---------------------------------------------------------------------------------
    Rule("GET", "/", "200 200 200 200 200 200 200"),
    Rule("GET", "/health", "200 200 200 200 200 200 200"),
    Rule("GET", "/api/v1/health", "200 200 200 200 200 200 200"),
    # --- auth -----------------------------------------------------------------------------------
    Rule("POST", "/api/v1/auth/register", "201 201 201 201 201 201 201", body=fresh_email),
    Rule(
        "POST",
        "/api/v1/auth/login",
        "200 200 200 200 200 200 200",
        body=lambda w: {"email": w.actors["viewer"].email, "password": w.actors["viewer"].password},
    ),
    Rule(
        "POST",
        "/api/v1/auth/refresh",
        "401 401 401 401 401 401 401",
        body=lambda w: {"refresh_token": "mr_not-a-real-token"},
    ),
    Rule("POST", "/api/v1/auth/logout", "401 204 204 204 204 401 401"),
    Rule("GET", "/api/v1/auth/me", "401 200 200 200 200 401 401"),
    Rule("PUT", "/api/v1/auth/me", "401 200 200 200 200 401 401", body=lambda w: {"first_name": "Renamed"}),
    Rule(
        "PUT",
        "/api/v1/auth/me/password",
        "401 204 204 204 204 401 401",
        body=lambda w: {"current_password": "correct horse battery", "new_password": "a new long password"},
    ),
    # --- instance administration: no principal of the matrix administers the installation ------
    *[
        Rule(method, f"/api/v1/admin{path}", "401 403 403 403 403 403 403", body=body)
        for method, path, body in (
            ("GET", "/organizations", None),
            ("PUT", "/organizations/{org_id}/plan", lambda w: {"plan": "free"}),
            ("GET", "/users", None),
            ("POST", "/users/{user_id}/deactivate", None),
            ("POST", "/users/{user_id}/reactivate", None),
            ("GET", "/failed-sign-ins", None),
        )
    ],
    # --- jobs -----------------------------------------------------------------------------------
    Rule("GET", "/api/v1/jobs/{job_id}", "401 200 200 200 404 200 403", scope=("jobs", "read")),
    # --- organisations --------------------------------------------------------------------------
    Rule("GET", "/api/v1/organizations", "401 200 200 200 200 200 403", scope=("organizations", "read")),
    Rule(
        "POST",
        "/api/v1/organizations",
        "401 201 201 201 201 403 403",
        scope=("organizations", "write"),
        body=lambda w: {"name": "Another organisation"},
    ),
    Rule(
        "GET",
        "/api/v1/organizations/{org_id}",
        "401 200 200 200 404 200 403",
        scope=("organizations", "read"),
    ),
    Rule(
        "PUT",
        "/api/v1/organizations/{org_id}",
        "401 403 403 200 404 200 403",
        scope=("organizations", "write"),
        body=lambda w: {"description": "changed"},
    ),
    Rule(
        "DELETE",
        "/api/v1/organizations/{org_id}",
        "401 403 403 204 404 204 403",
        scope=("organizations", "delete"),
    ),
    Rule(
        "GET",
        "/api/v1/organizations/{org_id}/users",
        "401 200 200 200 404 403 403",
        scope=("members", "read"),
    ),
    Rule(
        "POST",
        "/api/v1/organizations/{org_id}/users/invite",
        "401 403 403 201 404 403 403",
        scope=("invitations", "write"),
        body=lambda w: {"email": f"guest{next(_unique)}@example.com"},
    ),
    Rule(
        "GET",
        "/api/v1/organizations/{org_id}/invitations",
        "401 403 403 200 404 403 403",
        scope=("invitations", "read"),
    ),
    Rule(
        "DELETE",
        "/api/v1/organizations/{org_id}/invitations/{invitation_id}",
        "401 403 403 204 404 403 403",
        scope=("invitations", "delete"),
    ),
    Rule(
        "POST",
        "/api/v1/invitations/accept",
        "401 403 403 403 403 403 403",
        body=lambda w: {"token": w.invitation_token},
    ),
    Rule(
        "PUT",
        "/api/v1/organizations/{org_id}/users/{user_id}/role",
        "401 403 403 200 404 403 403",
        scope=("members", "write"),
        body=lambda w: {"role": "developer"},
    ),
    Rule(
        "DELETE",
        "/api/v1/organizations/{org_id}/users/{user_id}",
        "401 403 403 204 404 403 403",
        scope=("members", "delete"),
    ),
    # --- projects (the world's project has visibility "organization") ---------------------------
    Rule(
        "GET",
        "/api/v1/organizations/{org_id}/projects",
        "401 200 200 200 200 200 403",
        scope=("projects", "read"),
    ),
    Rule(
        "POST",
        "/api/v1/organizations/{org_id}/projects",
        "401 403 201 201 404 201 403",
        scope=("projects", "write"),
        body=lambda w: {"name": f"Project {next(_unique)}"},
    ),
    Rule("GET", "/api/v1/projects/{project_id}", "401 200 200 200 404 200 403", scope=("projects", "read")),
    Rule(
        "PUT",
        "/api/v1/projects/{project_id}",
        "401 403 403 200 404 200 403",
        scope=("projects", "write"),
        body=lambda w: {"description": "changed"},
    ),
    Rule(
        "DELETE", "/api/v1/projects/{project_id}", "401 403 403 204 404 204 403", scope=("projects", "delete")
    ),
    Rule(
        "GET",
        "/api/v1/projects/{project_id}/members",
        "401 200 200 200 404 200 403",
        scope=("projects", "read"),
    ),
    Rule(
        "POST",
        "/api/v1/projects/{project_id}/members",
        "401 403 403 201 404 403 403",
        scope=("members", "write"),
        body=lambda w: {"user_id": w.actors["developer"].user_id, "role": "admin"},
    ),
    Rule(
        "PUT",
        "/api/v1/projects/{project_id}/members/{user_id}",
        "401 403 403 200 404 403 403",
        scope=("members", "write"),
        body=lambda w: {"role": "developer"},
    ),
    Rule(
        "DELETE",
        "/api/v1/projects/{project_id}/members/{user_id}",
        "401 403 403 204 404 403 403",
        scope=("members", "delete"),
    ),
    # --- API keys and the audit log: people only, organisation admins only ----------------------
    Rule(
        "GET",
        "/api/v1/organizations/{org_id}/api-keys",
        "401 403 403 200 404 403 403",
        scope=("api_keys", "read"),
    ),
    Rule(
        "POST",
        "/api/v1/organizations/{org_id}/api-keys",
        "401 403 403 201 404 403 403",
        scope=("api_keys", "write"),
        body=lambda w: {"name": "ci", "permissions": {"models": ["read"]}},
    ),
    Rule(
        "PUT",
        "/api/v1/api-keys/{key_id}",
        "401 403 403 200 404 403 403",
        scope=("api_keys", "write"),
        body=lambda w: {"name": "renamed"},
    ),
    Rule("DELETE", "/api/v1/api-keys/{key_id}", "401 403 403 204 404 403 403", scope=("api_keys", "delete")),
    Rule(
        "GET",
        "/api/v1/organizations/{org_id}/audit-logs",
        "401 403 403 200 404 403 403",
        scope=("audit_logs", "read"),
    ),
    # --- model registry (a model in the world's project, which the organisation can see) -------
    Rule(
        "GET",
        "/api/v1/projects/{project_id}/models",
        "401 200 200 200 404 200 403",
        scope=("models", "read"),
    ),
    Rule(
        "POST",
        "/api/v1/projects/{project_id}/models",
        "401 403 201 201 404 201 403",
        scope=("models", "write"),
        body=lambda w: {"name": f"Model {next(_unique)}", "model_type": "classification"},
    ),
    Rule(
        "GET",
        "/api/v1/projects/{project_id}/models/by-name/{model_name}",
        "401 200 200 200 404 200 403",
        scope=("models", "read"),
    ),
    Rule("GET", "/api/v1/models/{model_id}", "401 200 200 200 404 200 403", scope=("models", "read")),
    Rule(
        "PUT",
        "/api/v1/models/{model_id}",
        "401 403 200 200 404 200 403",
        scope=("models", "write"),
        body=lambda w: {"description": "changed"},
    ),
    Rule("DELETE", "/api/v1/models/{model_id}", "401 403 204 204 404 204 403", scope=("models", "delete")),
    Rule("GET", "/api/v1/models/{model_id}/tags", "401 200 200 200 404 200 403", scope=("models", "read")),
    Rule(
        "PUT",
        "/api/v1/models/{model_id}/tags/{key}",
        "401 403 200 200 404 200 403",
        scope=("models", "write"),
        body=lambda w: {"value": "changed"},
    ),
    Rule(
        "DELETE",
        "/api/v1/models/{model_id}/tags/{key}",
        "401 403 204 204 404 204 403",
        scope=("models", "write"),
    ),
    Rule(
        "GET", "/api/v1/models/{model_id}/versions", "401 200 200 200 404 200 403", scope=("models", "read")
    ),
    Rule(
        "POST",
        "/api/v1/models/{model_id}/versions",
        "401 403 201 201 404 201 403",
        scope=("models", "write"),
        files=lambda w: {"model_file": ("model.bin", b"new model bytes")},
    ),
    Rule(
        "GET",
        "/api/v1/models/{model_id}/versions/{version}",
        "401 200 200 200 404 200 403",
        scope=("models", "read"),
    ),
    Rule(
        "DELETE",
        "/api/v1/models/{model_id}/versions/{version}",
        "401 403 204 204 404 204 403",
        scope=("models", "delete"),
    ),
    Rule(
        "GET",
        "/api/v1/models/{model_id}/versions/{version}/file",
        "401 200 200 200 404 200 403",
        scope=("models", "read"),
    ),
    Rule(
        "PUT",
        "/api/v1/models/{model_id}/versions/{version}/stage",
        "401 403 200 200 404 200 403",
        scope=("models", "write"),
        body=lambda w: {"stage": "staging"},
    ),
    # trusting a file that may run code on load: organisation admins only, never a key
    Rule(
        "PUT",
        "/api/v1/models/{model_id}/versions/{version}/trusted",
        "401 403 403 200 404 403 403",
        scope=("models", "write"),
        body=lambda w: {"trusted": True},
    ),
    Rule(
        "GET",
        "/api/v1/models/{model_id}/aliases/{alias}",
        "401 200 200 200 404 200 403",
        scope=("models", "read"),
    ),
    Rule(
        "PUT",
        "/api/v1/models/{model_id}/aliases/{alias}",
        "401 403 200 200 404 200 403",
        scope=("models", "write"),
        body=lambda w: {"version": w.version},
    ),
    Rule(
        "DELETE",
        "/api/v1/models/{model_id}/aliases/{alias}",
        "401 403 204 204 404 204 403",
        scope=("models", "write"),
    ),
    Rule(
        "GET",
        "/api/v1/models/{model_id}/versions/{version}/tags",
        "401 200 200 200 404 200 403",
        scope=("models", "read"),
    ),
    Rule(
        "PUT",
        "/api/v1/models/{model_id}/versions/{version}/tags/{key}",
        "401 403 200 200 404 200 403",
        scope=("models", "write"),
        body=lambda w: {"value": "changed"},
    ),
    Rule(
        "DELETE",
        "/api/v1/models/{model_id}/versions/{version}/tags/{key}",
        "401 403 204 204 404 204 403",
        scope=("models", "write"),
    ),
    # --- model cards: reading and rendering are reads, saving the sections a write ---------------
    Rule(
        "GET",
        "/api/v1/models/{model_id}/versions/{version}/stages",
        "401 200 200 200 404 200 403",
        scope=("models", "read"),
    ),
    Rule(
        "GET",
        "/api/v1/models/{model_id}/versions/{version}/card",
        "401 200 200 200 404 200 403",
        scope=("models", "read"),
    ),
    Rule(
        "PUT",
        "/api/v1/models/{model_id}/versions/{version}/card",
        "401 403 200 200 404 200 403",
        scope=("models", "write"),
        body=lambda w: {"limitations": ["Not evaluated outside the EU"]},
    ),
    Rule(
        "POST",
        "/api/v1/models/{model_id}/versions/{version}/card/generate",
        "401 200 200 200 404 200 403",
        scope=("models", "read"),
        body=lambda w: {"overrides": {"limitations": ["Draft"]}},
    ),
    Rule(
        "POST",
        "/api/v1/models/{model_id}/versions/{version}/card/validate",
        "401 200 200 200 404 200 403",
        scope=("models", "read"),
    ),
    # --- the name-addressed registry API (the world's model by name, version 1 = 1.0.0) ---------
    *[
        Rule(method, f"/api/v1{path}", expect, scope=("models", action), body=body)
        for method, path, expect, action, body in (
            ("GET", "/models", "401 200 200 200 200 200 403", "read", None),
            ("POST", "/models", CREATE, "write", registered_by_name),
            ("PATCH", "/models/{model_id}", CHANGE, "write", lambda w: {"tags": {"team": "risk"}}),
            ("POST", BY_NAME_VERSION + "/stage", CHANGE, "write", lambda w: {"stage": "Staging"}),
            ("POST", "/models/{model_id}/tags", CHANGE, "write", lambda w: {"key": "k", "value": "v"}),
            ("DELETE", "/models/{model_id}/tags", DELETED, "write", lambda w: {"key": w.tag_key}),
            ("POST", BY_NAME_VERSION + "/tags", CHANGE, "write", lambda w: {"key": "k", "value": "v"}),
            ("DELETE", BY_NAME_VERSION + "/tags", DELETED, "write", lambda w: {"key": w.tag_key}),
            ("GET", MODEL_CARD, READ, "read", None),
            ("POST", MODEL_CARD + "/generate", READ, "read", lambda w: {"overrides": {"limitations": ["x"]}}),
            ("POST", MODEL_CARD + "/validate", READ, "read", None),
        )
    ],
    # --- files (a dataset in the world's project) -----------------------------------------------
    Rule(
        "POST",
        "/api/v1/upload/models",
        "401 403 201 201 404 201 403",
        scope=("files", "write"),
        data=lambda w: {"project_id": w.project},
        files=lambda w: {"file": ("model.bin", b"model weights")},
    ),
    Rule(
        "POST",
        "/api/v1/upload/datasets",
        "401 403 201 201 404 201 403",
        scope=("files", "write"),
        data=lambda w: {"project_id": w.project},
        files=lambda w: {"file": ("data.csv", b"x,y\n1,2\n")},
    ),
    Rule(
        "GET", "/api/v1/projects/{project_id}/files", "401 200 200 200 404 200 403", scope=("files", "read")
    ),
    Rule("GET", "/api/v1/files/{file_id}", "401 200 200 200 404 200 403", scope=("files", "read")),
    Rule("GET", "/api/v1/files/{file_id}/download", "401 200 200 200 404 200 403", scope=("files", "read")),
    Rule("DELETE", "/api/v1/files/{file_id}", "401 403 204 204 404 204 403", scope=("files", "delete")),
    # --- experiment tracking (an experiment with a run in the world's project) ------------------
    *[
        Rule(method, f"/api/v1{path}", expect, scope=("experiments", action), body=body, files=files)
        for method, path, expect, action, body, files in (
            ("GET", "/projects/{project_id}/experiments", READ, "read", None, None),
            ("POST", "/projects/{project_id}/experiments", CREATE, "write", new_experiment, None),
            ("GET", "/experiments", "401 200 200 200 200 200 403", "read", None, None),
            ("POST", "/experiments", CREATE, "write", new_tracked_experiment, None),
            ("GET", EXPERIMENT, READ, "read", None, None),
            ("PUT", EXPERIMENT, CHANGE, "write", lambda w: {"description": "changed"}, None),
            ("PATCH", EXPERIMENT, CHANGE, "write", lambda w: {"description": "changed"}, None),
            ("DELETE", EXPERIMENT, "401 403 204 204 404 204 403", "delete", None, None),
            ("GET", f"{EXPERIMENT}/runs", READ, "read", None, None),
            ("POST", f"{EXPERIMENT}/runs", CREATE, "write", lambda w: {}, None),
            ("POST", f"{EXPERIMENT}/runs/search", READ, "read", lambda w: {}, None),
            ("POST", "/projects/{project_id}/runs/search", READ, "read", lambda w: {}, None),
            ("GET", f"{EXPERIMENT}/runs/compare", READ, "read", None, None),
            ("GET", f"{EXPERIMENT}/best-run", READ, "read", None, None),
            ("GET", RUN, READ, "read", None, None),
            ("PUT", f"{RUN}/status", CHANGE, "write", lambda w: {"status": "completed"}, None),
            ("POST", f"{RUN}/params", CHANGE, "write", lambda w: {"params": {"depth": 3}}, None),
            ("POST", f"{RUN}/tags", CHANGE, "write", lambda w: {"tags": {"team": "growth"}}, None),
            ("POST", f"{RUN}/metrics", CHANGE, "write", metric_batch, None),
            ("GET", f"{RUN}/metrics", READ, "read", None, None),
            ("GET", f"{RUN}/metrics/{{name}}", READ, "read", None, None),
            ("POST", f"{RUN}/artifacts", CREATE, "write", None, artifact_file),
            ("GET", f"{RUN}/artifacts", READ, "read", None, None),
            ("GET", f"{RUN}/artifacts/{{artifact_id}}/download", READ, "read", None, None),
        )
    ],
    # --- webhooks: organisation admins and keys granted webhooks ---------------------------------
    Rule("GET", "/api/v1/webhooks/event-types", "401 200 200 200 200 200 200"),
    *[
        Rule(method, f"/api/v1{path}", expect, scope=("webhooks", action), body=body)
        for method, path, expect, action, body in (
            ("GET", "/organizations/{org_id}/webhooks", "401 403 403 200 404 200 403", "read", None),
            ("POST", "/organizations/{org_id}/webhooks", "401 403 403 201 404 201 403", "write", new_webhook),
            ("PUT", WEBHOOK, "401 403 403 200 404 200 403", "write", lambda w: {"name": "Renamed"}),
            ("DELETE", WEBHOOK, "401 403 403 204 404 204 403", "delete", None),
            ("POST", f"{WEBHOOK}/rotate-secret", "401 403 403 200 404 200 403", "write", lambda w: {}),
            # The world's webhook points at an address the guard refuses: 422, nothing sent.
            ("POST", f"{WEBHOOK}/test", "401 403 403 422 404 422 403", "write", None),
            ("GET", f"{WEBHOOK}/deliveries", "401 403 403 200 404 200 403", "read", None),
            (
                "POST",
                f"{WEBHOOK}/deliveries/{{delivery_id}}/redeliver",
                "401 403 403 202 404 202 403",
                "write",
                None,
            ),
            ("POST", f"{WEBHOOK}/recover", "401 403 403 202 404 202 403", "write", recover_since),
        )
    ],
    # --- alerts: rules with the deployment's monitoring, alerts and silences for the
    # organisation's members, notification channels for its admins ----------------------------
    *[
        Rule(method, f"/api/v1{path}", expect, scope=(kind, action), body=body)
        for method, path, expect, kind, action, body in (
            (
                "POST",
                f"{MONITORING}/alerts",
                "401 403 201 201 404 201 403",
                "monitoring",
                "write",
                new_alert_rule,
            ),
            ("GET", f"{MONITORING}/alerts", DEPLOY_READ, "monitoring", "read", None),
            ("GET", ALERT_RULE, DEPLOY_READ, "monitoring", "read", None),
            ("PUT", ALERT_RULE, DEPLOY_CHANGE, "monitoring", "write", lambda w: {"threshold": 2}),
            ("DELETE", ALERT_RULE, "401 403 204 204 404 204 403", "monitoring", "delete", None),
            ("GET", "/organizations/{org_id}/alerts", READ, "alerts", "read", None),
            ("GET", ALERT, READ, "alerts", "read", None),
            ("PUT", f"{ALERT}/acknowledge", CHANGE, "alerts", "write", None),
            ("PUT", f"{ALERT}/resolve", CHANGE, "alerts", "write", None),
            ("GET", "/organizations/{org_id}/alert-silences", READ, "alerts", "read", None),
            ("POST", "/organizations/{org_id}/alert-silences", CREATE, "alerts", "write", new_silence),
            (
                "DELETE",
                "/organizations/{org_id}/alert-silences/{silence_id}",
                "401 403 204 204 404 204 403",
                "alerts",
                "delete",
                None,
            ),
            (
                "GET",
                "/organizations/{org_id}/notification-channels",
                "401 403 403 200 404 200 403",
                "notification_channels",
                "read",
                None,
            ),
            (
                "POST",
                "/organizations/{org_id}/notification-channels",
                "401 403 403 201 404 201 403",
                "notification_channels",
                "write",
                new_channel,
            ),
            (
                "PUT",
                CHANNEL,
                "401 403 403 200 404 200 403",
                "notification_channels",
                "write",
                lambda w: {"name": "Renamed"},
            ),
            ("DELETE", CHANNEL, "401 403 403 204 404 204 403", "notification_channels", "delete", None),
            # The world's channel points at an address the guard refuses: not delivered, nothing sent.
            (
                "POST",
                f"{CHANNEL}/test",
                "401 403 403 200 404 200 403",
                "notification_channels",
                "write",
                None,
            ),
        )
    ],
    # --- deployments and inference (the world's deployment, found by name for inference) --------
    *[
        Rule(method, f"/api/v1{path}", expect, scope=(kind, action), body=body)
        for method, path, expect, kind, action, body in (
            ("GET", DEPLOYMENTS, DEPLOY_READ, "deployments", "read", None),
            ("POST", DEPLOYMENTS, DEPLOY_CREATE, "deployments", "write", new_deployment),
            ("GET", DEPLOYMENT, DEPLOY_READ, "deployments", "read", None),
            ("PUT", DEPLOYMENT, DEPLOY_CHANGE, "deployments", "write", lambda w: {"min_instances": 0}),
            ("DELETE", DEPLOYMENT, "401 403 204 204 404 204 403", "deployments", "delete", None),
            ("POST", f"{DEPLOYMENT}/rollback", DEPLOY_ROLLBACK, "deployments", "write", lambda w: {}),
            ("GET", f"{DEPLOYMENT}/logs", DEPLOY_READ, "deployments", "read", None),
            ("GET", f"{DEPLOYMENT}/metrics", DEPLOY_READ, "deployments", "read", None),
            ("GET", f"{DEPLOYMENT}/monitoring/metrics", DEPLOY_READ, "monitoring", "read", None),
            ("POST", f"{DEPLOYMENT}/monitoring/ground-truth", DEPLOY_CHANGE, "monitoring", "write", labels),
            ("GET", f"{MONITORING}/reference", DEPLOY_READ, "monitoring", "read", None),
            ("PUT", f"{MONITORING}/reference", DEPLOY_SUBMIT, "monitoring", "write", traffic_window),
            ("GET", f"{MONITORING}/drift", NO_REFERENCE_READ, "monitoring", "read", None),
            ("POST", f"{MONITORING}/drift", NO_REFERENCE_ASK, "monitoring", "write", None),
            ("GET", f"{MONITORING}/drift/history", DEPLOY_READ, "monitoring", "read", None),
            ("GET", f"{MONITORING}/segment", DEPLOY_READ, "monitoring", "read", None),
            ("PUT", f"{MONITORING}/segment", DEPLOY_CHANGE, "monitoring", "write", segment_column),
            ("POST", INFERENCE, DEPLOY_READ, "inference", "read", instances),
            ("POST", f"{INFERENCE}/batch", DEPLOY_READ, "inference", "read", instances),
            ("GET", f"{INFERENCE}/health", DEPLOY_READ, "inference", "read", None),
            ("GET", f"{INFERENCE}/schema", DEPLOY_READ, "inference", "read", None),
            ("POST", f"{INFERENCE}/batch-jobs", DEPLOY_SUBMIT, "inference", "write", instances),
            ("GET", BATCH_RESULT, DEPLOY_READ, "inference", "read", None),
        )
    ],
]


def _params(rule: Rule) -> Any:
    return pytest.param(rule, id=f"{rule.method} {rule.path}")


@pytest.mark.parametrize("rule", [_params(rule) for rule in RULES])
def test_permission_matrix(app: FastAPI, rule: Rule) -> None:
    expected = rule.statuses()
    changes_state = rule.method != "GET"
    refused = [p for p in PRINCIPALS if not (changes_state and 200 <= expected[p] < 300)]
    allowed = [p for p in PRINCIPALS if p not in refused]
    outcomes: dict[str, int] = {}
    with TestClient(app) as client:
        shared = build_world(app, rule.scope)
        for principal in refused + allowed:
            world = shared if principal in refused else build_world(app, rule.scope)
            path = rule.path.format(**world.path_params())
            body = rule.body(world) if rule.body else None
            files = rule.files(world) if rule.files else None
            data = rule.data(world) if rule.data else None
            response = client.request(
                rule.method, path, headers=headers_for(world, principal), json=body, files=files, data=data
            )
            outcomes[principal] = response.status_code
    assert outcomes == expected


def test_every_route_has_a_rule(app: FastAPI) -> None:
    """A new route must say who may call it before it can ship."""
    documented = {(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item}
    ruled = {(rule.method, rule.path) for rule in RULES}
    assert documented - ruled == set(), "routes without a rule in the permission matrix"
    assert ruled - documented == set(), "rules for routes that do not exist"


def test_the_permission_checked_before_validation_is_the_routes_own(app: FastAPI) -> None:
    """A request with an invalid body is refused first for the permission that
    ``rbac.route_scope`` derives from the route's path and method; for every row whose
    scoped key succeeds, that permission must be one the key holds, or an API key with
    exactly the right grant would be refused whenever its body has a mistake."""
    from fastapi.routing import APIRoute, iter_route_contexts

    from maestro.api.deps import reads_only
    from maestro.identity.rbac import route_scope

    routes = {
        (method, context.path_format): context.original_route
        for context in iter_route_contexts(app.routes)
        if isinstance(context.original_route, APIRoute)
        for method in context.original_route.methods or ()
    }
    wrong = []
    for rule in RULES:
        statuses = rule.statuses()
        if rule.scope is None or not 200 <= statuses["key"] < 300:
            continue
        route = routes[rule.method, rule.path]
        derived = route_scope(rule.path, rule.method, reads_only=reads_only(route.dependant))
        if derived is not None and derived != rule.scope:
            wrong.append(f"{rule.method} {rule.path}: derived {derived}, the route needs {rule.scope}")
    assert wrong == []
