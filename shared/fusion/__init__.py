"""The fusion network, its training, calibration and saved artifacts (plain torch, no Celery)."""
