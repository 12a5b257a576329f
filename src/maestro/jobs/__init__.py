"""Background jobs: the ``jobs`` table is the record users see; Huey carries only job
ids between processes. Any consumer (in the server process or ``maestro worker``)
claims a job, heartbeats while it runs, and records its result; a reaper requeues or
fails jobs whose worker died."""
