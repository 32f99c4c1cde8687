"""modeldeploy: a Kubernetes operator that turns one ModelDeployment into an LLM endpoint."""

__version__ = "0.1.0"
