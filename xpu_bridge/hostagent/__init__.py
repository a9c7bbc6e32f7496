"""The host agent side: the port model and IDs, the HostAgent Protocol, its backends, health."""
