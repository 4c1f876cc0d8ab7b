# One image for every tollgate part (api, worker, flusher, migrate); compose.yaml picks the command.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
COPY lua ./lua
RUN pip install ".[dashboard]"
USER nobody
CMD ["tollgate", "api", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]
