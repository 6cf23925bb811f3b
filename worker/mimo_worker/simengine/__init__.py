"""The simulated SGLang engine: SGLang's HTTP surface and metrics over a model of one planned replica.

Users rehearse a deployment and its autoscaling without GPUs with it, and every e2e test and the demo run
it behind fake kubelets. ``engine`` is the scheduler model (pure, any clock), ``metrics`` SGLang's
Prometheus names, ``server`` the aiohttp app, ``options`` the ``sglang.launch_server`` command line.
Start it with ``python -m mimo_worker.simengine``.
"""
