"""The gateway: one OpenAI endpoint in front of every ModelDeployment (``modeldeploy gateway``).

``routing`` (targets, the routing table, the balancer) and ``keys`` (API keys and what each
may reach) are pure; ``discovery`` keeps them current from the cluster's watches,
``server`` is the aiohttp application, ``holding`` holds requests for a model at zero and
``wake`` signals its demand Lease, ``proxy`` forwards requests to pods, and ``metrics``
counts it all (docs/gateway.md).
"""
