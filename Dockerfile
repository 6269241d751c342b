# fusionq worker/CLI image. On a GPU host, install a CUDA build of torch instead of the CPU one.
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md alembic.ini ./
COPY shared ./shared
COPY workers ./workers
COPY migrations ./migrations
RUN pip install torch && pip install ".[api]"
CMD ["fusionq", "--help"]
