"""`xpu-bridge bench`: Allocate latency, scale, churn and CLI start-up on simulated nodes.

Split by concern: `command` (the CLI entry point; stdlib and xpu_bridge.cli only at module
level), `settings`, `runner` (the cases in order), one module per case (`allocate`, `scale`
with `encode`, `churn`, `cli_help`, `prewarm`), the node it runs on (`node`, `processes`),
the JSON document (`docs`), `stats`, `targets`, `report` (the table) and `plots`
(matplotlib, the optional `bench` extra).
"""
