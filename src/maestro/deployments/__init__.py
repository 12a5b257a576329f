"""Deployments: a registered model version served by the platform under a name, with its
inference routes, prediction log, per-minute request metrics and async batch jobs."""
