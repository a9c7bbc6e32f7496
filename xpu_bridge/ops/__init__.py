"""Operating the daemon: metrics, the HTTP endpoints, typed state, and the operator reports."""
