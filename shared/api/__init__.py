"""The HTTP API (``fusionq serve``): ``app`` builds it, ``models`` describe its bodies, ``metrics`` its figures.

Needs the ``api`` extra: ``pip install 'fusionq[api]'`` (FastAPI and uvicorn).
"""
