# One image for every function; each Knative Service picks its function by environment
# (FUNCTION_SOURCE + FUNCTION_TARGET for functions-framework) or command (the gRPC ingress).

# The report page's map script (Leaflet), the version package-lock.json pins.
FROM node:20.19.5-bookworm-slim AS assets
WORKDIR /assets
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
COPY uv.lock pyproject.toml README.md ./
# The uv release the lock pins, then the runtime dependencies alone (cached layer).
RUN pip install --no-cache-dir "uv==$(awk '/^name = "uv"$/{getline; gsub(/[^0-9.]/, ""); print}' uv.lock)" \
 && uv sync --frozen --no-dev --no-install-project
COPY shared ./shared
COPY --from=assets /assets/node_modules/leaflet/dist/leaflet.js \
     /assets/node_modules/leaflet/dist/leaflet.css \
     /assets/node_modules/leaflet/LICENSE ./shared/static/leaflet/
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11.14-slim-bookworm
# gunicorn opens its control socket in $XDG_RUNTIME_DIR, else under $HOME, which cannot be
# created on the read-only root ("Control server error" at every start), and temporary files
# (the CSV before its upload) go to $TMPDIR: /scratch is the writable emptyDir the HTTP
# Services mount (Knative reserves /tmp as a mount path and refuses a Service mounting it).
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_RUNTIME_DIR=/scratch \
    TMPDIR=/scratch
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY functions ./functions
USER 10001
EXPOSE 8080
CMD ["functions-framework"]
