"""Root conftest: Celery's own pytest fixtures (pytest-celery 1.x is disabled in addopts),
and a real Prometheus (tests/prometheus.py)."""

pytest_plugins = ("celery.contrib.pytest", "tests.prometheus", "tests.monitoring_servers")
