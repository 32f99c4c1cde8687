"""The local Kubernetes control plane used by the e2e tests and `make demo`."""
