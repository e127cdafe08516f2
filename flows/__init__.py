"""Prefect orchestration of the DVC pipeline: `flows.pipeline` (the flow), `flows.serve` (a scheduled deployment),
`flows.dvc` (what the flow asks of DVC), `flows.artifacts` (UI artifacts), `flows.server` (a local server)."""
