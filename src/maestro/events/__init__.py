"""Domain events: an outbox table written in the same transaction as the change it
describes, read later by whatever delivers events (webhooks)."""
