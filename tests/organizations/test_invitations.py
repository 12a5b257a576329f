"""Invitations: an admin invites by email, the invitee accepts with the token."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from maestro.db import utcnow
from maestro.identity import security
from maestro.identity.models import AuditLog, User
from maestro.organizations.models import Invitation, Membership
from tests.factories import Actor, Factory

ACCEPT = "/api/v1/invitations/accept"
CREATED_FIELDS = {"id", "email", "role", "expires_at", "created_at", "invite_token"}


def invite_url(org_id: str) -> str:
    return f"/api/v1/organizations/{org_id}/users/invite"


def invite(client: TestClient, org_id: str, admin: Actor, email: str, role: str = "viewer") -> dict:
    response = client.post(invite_url(org_id), headers=admin.headers, json={"email": email, "role": role})
    assert response.status_code == 201, response.text
    return response.json()["data"]


class TestInviteMember:
    def test_admin_invites_and_gets_the_token_once(
        self,
        app: FastAPI,
        client: TestClient,
        factory: Factory,
        audit_rows: Callable[..., list[AuditLog]],
    ) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        before = utcnow()
        response = client.post(
            invite_url(org_id),
            headers=admin.headers,
            json={"email": "  New.Person@Example.COM ", "role": "developer"},
        )
        assert response.status_code == 201, response.text
        data = response.json()["data"]
        assert set(data) == CREATED_FIELDS
        assert data["id"].startswith("inv_")
        assert data["email"] == "new.person@example.com"
        assert data["role"] == "developer"
        assert data["invite_token"].startswith("mi_")
        assert data["expires_at"].endswith("Z")

        with app.state.database.session(write=False) as session:
            stored = session.get(Invitation, data["id"])
        assert stored is not None
        assert stored.token_hash == security.sha256_hex(data["invite_token"])
        assert data["invite_token"] not in stored.token_hash
        assert stored.invited_by_id == admin.user_id
        ttl = timedelta(hours=app.state.settings.invitation_ttl_hours)
        assert before + ttl - timedelta(minutes=1) < stored.expires_at < utcnow() + ttl + timedelta(minutes=1)

        [row] = audit_rows(resource_type="invitations", resource_id=data["id"])
        assert row.outcome == "success"
        assert row.organization_id == org_id
        assert data["invite_token"] not in str(row.details)

    def test_role_defaults_to_viewer(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        response = client.post(invite_url(org_id), headers=admin.headers, json={"email": "v@example.com"})
        assert response.json()["data"]["role"] == "viewer"

    def test_inviting_a_member_is_a_conflict(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        member = factory.user(org_id, "viewer")
        response = client.post(
            invite_url(org_id), headers=admin.headers, json={"email": member.email.upper()}
        )
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "CONFLICT"

    def test_a_new_invitation_replaces_a_pending_one(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        invitee = factory.user(email="twice@example.com")
        old = invite(client, org_id, admin, "twice@example.com")
        new = invite(client, org_id, admin, "twice@example.com", role="developer")
        assert (
            client.post(ACCEPT, headers=invitee.headers, json={"token": old["invite_token"]}).status_code
            == 404
        )
        accepted = client.post(ACCEPT, headers=invitee.headers, json={"token": new["invite_token"]})
        assert accepted.status_code == 200
        assert accepted.json()["data"]["role"] == "developer"

    @pytest.mark.parametrize("role", ["developer", "viewer"])
    def test_non_admin_cannot_invite(
        self, client: TestClient, factory: Factory, audit_rows: Callable[..., list[AuditLog]], role: str
    ) -> None:
        org_id = factory.organization()
        factory.user(org_id, "admin")
        member = factory.user(org_id, role)
        response = client.post(
            invite_url(org_id), headers=member.headers, json={"email": "friend@example.com", "role": "admin"}
        )
        assert response.status_code == 403
        [row] = audit_rows(actor_id=member.user_id, outcome="denied")
        assert row.resource_type == "invitations"

    def test_api_key_cannot_invite(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        key = factory.api_key(org_id, {"organizations": ["read", "write", "delete"]})
        response = client.post(
            invite_url(org_id), headers={"X-API-Key": key}, json={"email": "k@example.com"}
        )
        assert response.status_code == 403

    def test_other_organization_is_not_found(
        self, app: FastAPI, client: TestClient, factory: Factory
    ) -> None:
        mine = factory.organization()
        factory.user(mine, "admin")
        outsider = factory.user(factory.organization(), "admin")
        response = client.post(invite_url(mine), headers=outsider.headers, json={"email": "spy@example.com"})
        assert response.status_code == 404
        assert (
            client.post(
                invite_url("org_none"), headers=outsider.headers, json={"email": "a@example.com"}
            ).status_code
            == 404
        )
        with app.state.database.session(write=False) as session:
            assert session.scalars(select(Invitation)).all() == []

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"email": "not-an-email"},
            {"email": "a" * 10_000 + "@example.com"},
            {"email": "x@example.com", "role": "owner"},
            {"email": "x@example.com", "organization_id": "org_other"},
            {"email": "x@example.com", "expires_at": "2099-01-01T00:00:00Z"},
            {"email": ["x@example.com"]},
        ],
    )
    def test_malformed_bodies_are_rejected(self, client: TestClient, factory: Factory, body: dict) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        response = client.post(invite_url(org_id), headers=admin.headers, json=body)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"

    def test_anonymous_is_refused(self, client: TestClient, factory: Factory) -> None:
        response = client.post(invite_url(factory.organization()), json={"email": "a@example.com"})
        assert response.status_code == 401


class TestAcceptInvitation:
    def test_invitee_joins_with_the_invited_role(
        self,
        app: FastAPI,
        client: TestClient,
        factory: Factory,
        audit_rows: Callable[..., list[AuditLog]],
    ) -> None:
        org_id = factory.organization("Joinable")
        admin = factory.user(org_id, "admin")
        invitee = factory.user(email="invitee@example.com")
        invitation = invite(client, org_id, admin, "Invitee@Example.com", role="developer")

        response = client.post(ACCEPT, headers=invitee.headers, json={"token": invitation["invite_token"]})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert data["id"] == org_id
        assert data["name"] == "Joinable"
        assert data["role"] == "developer"
        assert data["member_count"] == 2

        members = client.get(f"/api/v1/organizations/{org_id}/users", headers=admin.headers).json()["data"]
        assert {m["id"]: m["role"] for m in members}[invitee.user_id] == "developer"
        with app.state.database.session(write=False) as session:
            assert session.get(User, invitee.user_id).current_organization_id == org_id
            stored = session.get(Invitation, invitation["id"])
            assert stored is not None
            assert stored.accepted_at is not None
            assert stored.accepted_by_id == invitee.user_id
        # The new member now acts in the organisation by default.
        me = client.get("/api/v1/auth/me", headers=invitee.headers).json()["data"]
        assert me["current_organization"] == {"id": org_id, "name": "Joinable", "role": "developer"}
        [row] = audit_rows(
            resource_type="invitations", resource_id=invitation["id"], actor_id=invitee.user_id
        )
        assert row.outcome == "success"
        assert row.organization_id == org_id

    def test_current_organization_is_kept_when_set(
        self, app: FastAPI, client: TestClient, factory: Factory
    ) -> None:
        home = factory.organization()
        invitee = factory.user(home, "admin")
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        token = invite(client, org_id, admin, invitee.email)["invite_token"]
        assert client.post(ACCEPT, headers=invitee.headers, json={"token": token}).status_code == 200
        with app.state.database.session(write=False) as session:
            assert session.get(User, invitee.user_id).current_organization_id == home

    def test_a_token_works_once(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        invitee = factory.user(email="once@example.com")
        token = invite(client, org_id, admin, "once@example.com")["invite_token"]
        assert client.post(ACCEPT, headers=invitee.headers, json={"token": token}).status_code == 200
        # Leave, then try the same token again.
        left = client.delete(
            f"/api/v1/organizations/{org_id}/users/{invitee.user_id}", headers=invitee.headers
        )
        assert left.status_code == 204
        again = client.post(ACCEPT, headers=invitee.headers, json={"token": token})
        assert again.status_code == 404
        assert "already been used" in again.json()["error"]["message"]

    def test_an_expired_invitation_is_refused(
        self, app: FastAPI, client: TestClient, factory: Factory
    ) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        invitee = factory.user(email="late@example.com")
        invitation = invite(client, org_id, admin, "late@example.com")
        with app.state.database.session() as session:
            session.execute(
                update(Invitation)
                .where(Invitation.id == invitation["id"])
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        response = client.post(ACCEPT, headers=invitee.headers, json={"token": invitation["invite_token"]})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "RESOURCE_NOT_FOUND"
        assert "expired" in response.json()["error"]["message"]
        assert client.get(f"/api/v1/organizations/{org_id}", headers=invitee.headers).status_code == 404

    def test_unknown_token_is_not_found(self, client: TestClient, factory: Factory) -> None:
        someone = factory.user(factory.organization(), "admin")
        for token in ("mi_doesnotexist", "' OR 1=1 --"):
            response = client.post(ACCEPT, headers=someone.headers, json={"token": token})
            assert response.status_code == 404
            assert "No invitation" in response.json()["error"]["message"]

    def test_invitation_for_another_email_is_forbidden(
        self, client: TestClient, factory: Factory, audit_rows: Callable[..., list[AuditLog]]
    ) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        intended = factory.user(email="intended@example.com")
        thief = factory.user(factory.organization(), "admin")
        token = invite(client, org_id, admin, "intended@example.com")["invite_token"]
        response = client.post(ACCEPT, headers=thief.headers, json={"token": token})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "INSUFFICIENT_PERMISSIONS"
        [row] = audit_rows(actor_id=thief.user_id, outcome="denied")
        assert row.organization_id == org_id
        assert row.resource_type == "invitations"
        assert client.get(f"/api/v1/organizations/{org_id}", headers=thief.headers).status_code == 404
        # Still usable by the person it was meant for.
        assert client.post(ACCEPT, headers=intended.headers, json={"token": token}).status_code == 200

    def test_api_key_cannot_accept(
        self, client: TestClient, factory: Factory, audit_rows: Callable[..., list[AuditLog]]
    ) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        token = invite(client, org_id, admin, "robot@example.com")["invite_token"]
        key = factory.api_key(factory.organization(), {"organizations": ["read", "write", "delete"]})
        response = client.post(ACCEPT, headers={"X-API-Key": key}, json={"token": token})
        assert response.status_code == 403
        assert len(audit_rows(actor_type="api_key", outcome="denied")) == 1

    def test_an_existing_member_gets_a_conflict(
        self, app: FastAPI, client: TestClient, factory: Factory
    ) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        invitee = factory.user(email="dup@example.com")
        token = invite(client, org_id, admin, "dup@example.com")["invite_token"]
        with app.state.database.session() as session:
            session.add(Membership(organization_id=org_id, user_id=invitee.user_id, role="viewer"))
        assert client.post(ACCEPT, headers=invitee.headers, json={"token": token}).status_code == 409

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"token": ""},
            {"token": "t" * 201},
            {"token": 12},
            {"token": "mi_x", "role": "admin"},
            {"token": "mi_x", "organization_id": "org_x"},
        ],
    )
    def test_malformed_bodies_are_rejected(self, client: TestClient, factory: Factory, body: dict) -> None:
        someone = factory.user()
        response = client.post(ACCEPT, headers=someone.headers, json=body)
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"

    def test_invited_role_cannot_be_widened_in_the_body(self, client: TestClient, factory: Factory) -> None:
        org_id = factory.organization()
        admin = factory.user(org_id, "admin")
        invitee = factory.user(email="greedy@example.com")
        token = invite(client, org_id, admin, "greedy@example.com")["invite_token"]
        response = client.post(ACCEPT, headers=invitee.headers, json={"token": token, "role": "admin"})
        assert response.status_code == 422
        accepted = client.post(ACCEPT, headers=invitee.headers, json={"token": token})
        assert accepted.json()["data"]["role"] == "viewer"

    def test_anonymous_is_refused(self, client: TestClient) -> None:
        assert client.post(ACCEPT, json={"token": "mi_x"}).status_code == 401


class TestPendingInvitations:
    """Admins list their organisation's pending invitations and cancel them; a
    cancelled token no longer accepts; another organisation's invitation id answers
    exactly like an unknown one."""

    def test_list_shows_pending_ones_only_without_tokens(self, client: TestClient, factory: Factory) -> None:
        org = factory.organization()
        admin = factory.user(org, "admin")
        invitee = factory.user(email="joiner@example.com")
        first = invite(client, org, admin, "later@example.com", "developer")
        accepted = invite(client, org, admin, invitee.email)
        assert (
            client.post(ACCEPT, headers=invitee.headers, json={"token": accepted["invite_token"]}).status_code
            == 200
        )
        expired = invite(client, org, admin, "expired@example.com")
        with factory.database.session() as session:
            session.execute(
                update(Invitation).where(Invitation.id == expired["id"]).values(expires_at=utcnow())
            )

        listed = client.get(f"/api/v1/organizations/{org}/invitations", headers=admin.headers)
        assert listed.status_code == 200, listed.text
        rows = listed.json()["data"]
        assert [row["id"] for row in rows] == [first["id"]]
        assert rows[0]["role"] == "developer"
        assert rows[0]["invited_by"]["id"] == admin.user_id
        assert "invite_token" not in rows[0] and "token_hash" not in rows[0]
        assert listed.json()["pagination"]["total"] == 1

    def test_a_cancelled_invitation_no_longer_accepts(self, client: TestClient, factory: Factory) -> None:
        org = factory.organization()
        admin = factory.user(org, "admin")
        invitee = factory.user(email="cancelled@example.com")
        created = invite(client, org, admin, invitee.email)
        url = f"/api/v1/organizations/{org}/invitations/{created['id']}"
        assert client.delete(url, headers=admin.headers).status_code == 204
        refused = client.post(ACCEPT, headers=invitee.headers, json={"token": created["invite_token"]})
        assert refused.status_code == 404
        assert client.delete(url, headers=admin.headers).status_code == 404
        assert (
            client.get(f"/api/v1/organizations/{org}/invitations", headers=admin.headers).json()["data"] == []
        )

    def test_another_organisations_invitation_is_not_found(
        self, client: TestClient, factory: Factory
    ) -> None:
        org, other = factory.organization(), factory.organization()
        admin, other_admin = factory.user(org, "admin"), factory.user(other, "admin")
        theirs = invite(client, other, other_admin, "theirs@example.com")
        through_mine = client.delete(
            f"/api/v1/organizations/{org}/invitations/{theirs['id']}", headers=admin.headers
        )
        unknown = client.delete(f"/api/v1/organizations/{org}/invitations/inv_nosuch", headers=admin.headers)
        assert through_mine.status_code == unknown.status_code == 404
        assert through_mine.json()["error"] == unknown.json()["error"]
        directly = client.delete(
            f"/api/v1/organizations/{other}/invitations/{theirs['id']}", headers=admin.headers
        )
        assert directly.status_code == 404
        still = client.get(f"/api/v1/organizations/{other}/invitations", headers=other_admin.headers)
        assert [row["id"] for row in still.json()["data"]] == [theirs["id"]]

    def test_members_who_are_not_admins_and_api_keys_are_refused(
        self, client: TestClient, factory: Factory
    ) -> None:
        org = factory.organization()
        admin = factory.user(org, "admin")
        developer = factory.user(org, "developer")
        key = factory.api_key(org, {"organizations": ["read", "write", "delete"]})
        created = invite(client, org, admin, "guest@example.com")
        for headers in (developer.headers, {"X-API-Key": key}):
            assert client.get(f"/api/v1/organizations/{org}/invitations", headers=headers).status_code == 403
            url = f"/api/v1/organizations/{org}/invitations/{created['id']}"
            assert client.delete(url, headers=headers).status_code == 403
