"""Alerts: rules over a deployment's monitored quantities, their evaluation, the alerts
they raise, silences, and the channels notifications go to."""
