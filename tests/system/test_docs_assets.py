"""/docs and /redoc work without internet access: every script, style sheet and icon
they load comes from this server, from the copies shipped in the package."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from fastapi.testclient import TestClient

from maestro.app import VENDOR_DIR

REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""")


def references(html: str) -> list[str]:
    return [a or b for a, b in REFERENCE.findall(html)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_documentation_pages_load_only_from_this_server(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    found = references(response.text)
    assert found, "the page names no asset"
    assert not re.search(r"https?://|//[a-z]", response.text.replace("http://www.w3.org", "")), response.text
    for url in found:
        assert url.startswith("/"), url
        assert client.get(url).status_code == 200, url


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/docs/swagger-ui/swagger-ui-bundle.js", "text/javascript"),
        ("/static/docs/swagger-ui/swagger-ui.css", "text/css"),
        ("/static/docs/swagger-ui/favicon-32x32.png", "image/png"),
        ("/static/docs/redoc/redoc.standalone.js", "text/javascript"),
    ],
)
def test_assets_are_served_with_their_content_type(client: TestClient, path: str, content_type: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == content_type
    assert response.content == (VENDOR_DIR / path.removeprefix("/static/docs/")).read_bytes()


def test_the_vendored_files_are_the_released_ones() -> None:
    """The manifest names each package, its version and the SHA-256 of every file taken
    from its npm release; the files on disk must match, licences included."""
    manifest = json.loads((VENDOR_DIR / "manifest.json").read_text())
    names = {package["name"] for package in manifest["packages"]}
    assert names == {"swagger-ui-dist", "redoc"}
    for package in manifest["packages"]:
        folder = VENDOR_DIR / package["directory"]
        assert package["version"] and "LICENSE" in package["files"]
        on_disk = {path.name for path in folder.iterdir()}
        assert on_disk == set(package["files"]), f"{folder} holds files the manifest does not list"
        for name, digest in package["files"].items():
            assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


def test_unknown_assets_answer_404(client: TestClient) -> None:
    assert client.get("/static/docs/../app.py").status_code == 404
    assert client.get("/static/docs/nothing.js").status_code == 404
