"""The kubelet side: device plugin servers and endpoints, registration, the PodResources client."""
