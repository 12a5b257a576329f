"""The registry document's own usage examples (Examples 2 and 3 of "Model Registry and
Model Cards"), run with curl against a real `maestro serve`, each command as the
document writes it but for an added `Authorization` header and the server's address.

The examples assume what they do not show: Example 2 stages version 1 of a model it
created without versions, and Example 3 reads version 3 of a `fraud-detector` model.
The test puts those in place through the API between the steps (uploading version 1,
a second version already in Production for step 5 to archive, and fraud-detector's
version 3), and says so where it does.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from maestro.config import Settings
from tests.conftest import RunningProcess
from tests.factories import Factory, Org

# The document's text, as the contract a client is written against.
SPEC_EXAMPLES = r"""
### Example 2: Model Lifecycle via API

```bash
# 1. Create model
curl -X POST http://localhost:8000/api/v1/models \
  -H "Content-Type: application/json" \
  -d '{
    "name": "customer-churn",
    "description": "Predicts customer churn",
    "tags": {"team": "growth"}
  }'

# 2. Get model details
curl http://localhost:8000/api/v1/models/customer-churn

# 3. Transition to staging
curl -X POST http://localhost:8000/api/v1/models/customer-churn/versions/1/stage \
  -H "Content-Type: application/json" \
  -d '{"stage": "Staging"}'

# 4. Add tag
curl -X POST http://localhost:8000/api/v1/models/customer-churn/tags \
  -H "Content-Type: application/json" \
  -d '{"key": "validated", "value": "true"}'

# 5. Promote to production
curl -X POST http://localhost:8000/api/v1/models/customer-churn/versions/1/stage \
  -H "Content-Type: application/json" \
  -d '{"stage": "Production", "archive_existing_versions": true}'
```

### Example 3: Generate Model Card

```bash
# Get model card as JSON
curl http://localhost:8000/api/v1/model-cards/fraud-detector/versions/3 \
  | jq

# Get as Markdown
curl "http://localhost:8000/api/v1/model-cards/fraud-detector/versions/3?format=markdown" \
  -o fraud-detector-v3.md

# Generate PDF with overrides
curl -X POST http://localhost:8000/api/v1/model-cards/fraud-detector/versions/3/generate \
  -H "Content-Type: application/json" \
  -d '{
    "overrides": {
      "intended_use": {
        "primary_uses": ["Fraud detection in payment processing"],
        "out_of_scope": ["Credit scoring", "Employment decisions"]
      },
      "ethical_considerations": {
        "risks_and_harms": ["Potential demographic bias"],
        "mitigations": ["Regular bias audits", "Human review process"]
      }
    }
  }' \
  -o fraud-detector-v3.pdf
```
"""

OVERRIDES = {
    "intended_use": {
        "primary_uses": ["Fraud detection in payment processing"],
        "out_of_scope": ["Credit scoring", "Employment decisions"],
    },
    "ethical_considerations": {
        "risks_and_harms": ["Potential demographic bias"],
        "mitigations": ["Regular bias audits", "Human review process"],
    },
}


def spec_commands(title: str) -> list[str]:
    """The curl commands of one example: the text between its comment lines."""
    section = SPEC_EXAMPLES.split(f"### {title}", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    commands, current = [], []
    for line in block.group(1).splitlines():
        if line.startswith("#"):
            if current:
                commands.append("\n".join(current))
            current = []
        elif line.strip():
            current.append(line)
    commands.append("\n".join(current))
    return commands


class Shell:
    """Runs a document's command with the token added and this server's address."""

    def __init__(self, base_url: str, token: str, cwd: Path) -> None:
        self.base_url, self.token, self.cwd = base_url, token, cwd

    def __call__(self, command: str) -> str:
        assert command.startswith("curl ")
        command = command.replace("http://localhost:8000", self.base_url)
        command = command.replace("curl ", 'curl -H "Authorization: Bearer $TOKEN" ', 1)
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=self.cwd,
            env={"PATH": "/usr/bin:/bin", "TOKEN": self.token},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def json(self, command: str) -> dict[str, Any]:
        answer = json.loads(self(command))
        assert answer.get("success") is True, answer
        return answer["data"]


def upload(api: httpx.Client, model: str, **fields: str) -> dict[str, Any]:
    response = api.post(
        f"/api/v1/models/{model}/versions",
        data=fields,
        files={"model_file": ("model.bin", b"model bytes", "application/octet-stream")},
    )
    assert response.status_code == 201, response.text
    return response.json()["data"]


def test_examples_2_and_3_run_as_written(
    app: FastAPI, settings: Settings, serve: Callable[..., RunningProcess], tmp_path: Path
) -> None:
    # One organisation with one project: Example 2 creates its model without naming one.
    team = Org.new(Factory(app), "Spec readers")
    project = team.project("private", name="Churn")
    server = serve(settings)
    run = Shell(server.base_url, team.admin.access_token, tmp_path)
    api = httpx.Client(base_url=server.base_url, headers=team.admin.headers, timeout=60)

    create, get, stage, tag, promote = spec_commands("Example 2")
    created = run.json(create)
    assert (created["name"], created["description"]) == ("customer-churn", "Predicts customer churn")
    assert created["tags"] == ["team"]
    tags = api.get("/api/v1/models/customer-churn/tags").json()["data"]
    assert tags == [{"key": "team", "value": "growth"}]
    assert api.get(f"/api/v1/models/{created['id']}").json()["data"]["name"] == "customer-churn"

    assert run.json(get)["id"] == created["id"]

    # Set-up the example assumes: version 1 of the model, uploaded through the API.
    assert upload(api, "customer-churn")["version"] == "1.0.0"
    staged = run.json(stage)
    assert (staged["version"], staged["stage"]) == ("1.0.0", "staging")

    assert run.json(tag) == {"key": "validated", "value": "true"}
    tags = api.get("/api/v1/models/customer-churn/tags").json()["data"]
    assert tags == [{"key": "team", "value": "growth"}, {"key": "validated", "value": "true"}]

    # Set-up for step 5: another version already in Production, which promoting archives.
    upload(api, "customer-churn", version="1.0.1", stage="production")
    promoted = run.json(promote)
    assert (promoted["version"], promoted["stage"]) == ("1.0.0", "production")
    versions = api.get("/api/v1/models/customer-churn/versions").json()["data"]
    assert {v["version"]: v["stage"] for v in versions} == {"1.0.0": "production", "1.0.1": "archived"}
    history = api.get("/api/v1/models/customer-churn/versions/1/stages").json()["data"]
    assert [h["to_stage"] for h in history] == ["development", "staging", "production"]

    # Set-up Example 3 assumes: fraud-detector with a version 3, with metrics and a schema.
    fraud = api.post(
        "/api/v1/models",
        json={"name": "fraud-detector", "project_id": project, "tags": {"team": "risk"}},
    )
    assert fraud.status_code == 201, fraud.text
    upload(
        api,
        "fraud-detector",
        version="3.0.0",
        performance_metrics=json.dumps({"accuracy": 0.947}),
        model_schema=json.dumps({"inputs": [{"name": "amount", "type": "float"}]}),
    )

    as_json, as_markdown, as_pdf = spec_commands("Example 3")
    card = run.json(as_json)
    assert (card["model"]["name"], card["version"]["version"]) == ("fraud-detector", "3.0.0")
    assert card["performance_metrics"] == [{"name": "accuracy", "value": 0.947}]
    assert card["model"]["tags"] == [{"key": "team", "value": "risk"}]

    run(as_markdown)
    markdown = (tmp_path / "fraud-detector-v3.md").read_text()
    assert "fraud-detector" in markdown and "3.0.0" in markdown and "accuracy" in markdown

    run(as_pdf)
    pdf = (tmp_path / "fraud-detector-v3.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and len(pdf) > 1000

    # Validating, in the same style (the document lists the route without an example):
    # the overrides of Example 3 fill the sections a card is missing without them.
    validate = (
        "curl -X POST http://localhost:8000/api/v1/model-cards/fraud-detector/versions/3/validate \\\n"
        '  -H "Content-Type: application/json" \\\n'
        f"  -d '{json.dumps({'overrides': OVERRIDES})}'"
    )
    with_overrides = run.json(validate)
    without = run.json(validate.split(" \\\n  -H")[0])
    assert "intended_use" in without["missing_sections"]
    assert "intended_use" not in with_overrides["missing_sections"]
    assert "ethical_considerations" not in with_overrides["missing_sections"]
    api.close()
