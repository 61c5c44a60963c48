# One image for all three roles: `manager` (Deployment), `agent` (DaemonSet) and `download`
# (the agent's Jobs run `python -m controller download URI DEST`, so `python` must be on PATH).
#   docker build -t localmodel-controller:latest .
# The first stage builds wheels; the final image holds the installed package and no sources.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml ./
COPY controller ./controller
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels localmodel-controller && rm -rf /wheels
# UID/GID 1000, numeric so that runAsNonRoot can verify it. The manifests assume this user: the
# agent's init container hands the host model directory to 1000:1000.
RUN groupadd --system --gid 1000 controller \
    && useradd --system --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin controller
USER 1000:1000
WORKDIR /
ENTRYPOINT ["python", "-m", "controller"]
CMD ["--help"]
