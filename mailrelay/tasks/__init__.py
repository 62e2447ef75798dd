"""Celery tasks: thin shells around intake.py and delivery.py."""
