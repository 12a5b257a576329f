"""Webhooks: subscriptions to the platform's events, signed deliveries with retries and
a dead letter, and the guard every outbound request goes through."""
