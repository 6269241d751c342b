"""The Celery app the ``celery`` command loads, configured from this process's environment.

``celery -A workers.app worker -Q embed -c 1 -P solo -E`` (one worker per queue; see the README).
"""

from shared.settings import get_settings
from workers.celery_app import create_app

app = create_app(get_settings())
