# syntax=docker/dockerfile:1
# The allocation service: FastAPI + onnxruntime (no torch), SQLite by default or PostgreSQL.
#   docker build -t dfcl .
#   docker run -p 8000:8000 -v dfcl:/var/lib/dfcl dfcl
#   docker run ... -e DFCL_DATABASE_URL=postgresql://user:pw@db:5432/dfcl dfcl
# Models: mount a model directory and register it, e.g.
#   docker run -v $PWD/runs:/runs:ro ... ; docker exec <id> dfcl models register /runs/m --activate

# --- build: wheels for the package and its serve extra --------------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY training ./training
RUN pip wheel --wheel-dir /wheels ".[serve]"

# --- runtime: slim, non-root, only the serve dependencies ------------------------------------
FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DFCL_HOST=0.0.0.0 \
    DFCL_PORT=8000 \
    DFCL_DATA_DIR=/var/lib/dfcl/data \
    DFCL_MODELS_DIR=/var/lib/dfcl/models \
    DFCL_MIGRATIONS_DIR=/opt/dfcl/migrations
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/dfcl dfcl
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels "dfcl[serve]" && rm -rf /wheels
# Migrations are not Python package data: they ship beside the package, found via
# DFCL_MIGRATIONS_DIR; the service applies them at startup. alembic.ini is for manual use:
#   alembic -c /opt/dfcl/alembic.ini upgrade head
COPY migrations /opt/dfcl/migrations
COPY alembic.ini /opt/dfcl/alembic.ini
USER dfcl
WORKDIR /var/lib/dfcl
VOLUME ["/var/lib/dfcl"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]
CMD ["dfcl", "serve"]
