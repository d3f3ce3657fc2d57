"""Job notifications: after each job (one-shot `vmbackup backup` and the daemon), the
job's report to every webhook whose ``on`` names its status (docs/operations.md,
"Notifications"). payload.py: the bodies; webhook.py: one POST with its retries, token and
signature; notifier.py: every webhook of the config, metrics and what failed."""
