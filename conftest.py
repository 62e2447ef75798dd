"""Root conftest: Celery's own pytest fixtures (pytest-celery 1.x is disabled in addopts)."""

pytest_plugins = ("celery.contrib.pytest",)
