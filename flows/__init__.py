"""Prefect orchestration of the DVC pipeline.

`flows.pipeline` (the flow), `flows.serve` (a scheduled deployment), `flows.dvc_tools` (what the flow asks of DVC),
`flows.ui_artifacts` (the UI artifacts), `flows.local_server` (a Prefect server on 127.0.0.1 for tests and demos).
Module names avoid `dvc`, `stages`, ...: Prefect may put this folder on sys.path when it loads a flow from its file.
"""
