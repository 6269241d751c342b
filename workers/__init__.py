"""Celery side of fusionq: the app (``workers.app``) and one thin task module per queue."""
