"""Users, organisations, memberships, invitations, sessions and tokens, API keys,
authorisation and the audit log."""
