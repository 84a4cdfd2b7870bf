FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY events events
COPY aggregates aggregates
COPY commands commands
COPY projections projections
COPY readapi readapi
COPY replay replay
COPY crm crm
RUN pip install --no-cache-dir .
ENV CRM_HOST=0.0.0.0 CRM_PORT=8000
EXPOSE 8000
CMD ["crm", "serve"]
