"""Organisations (tenants), their members and invitations."""
