FROM node:20-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
RUN npm run build

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY events events
COPY aggregates aggregates
COPY commands commands
COPY eventstore eventstore
COPY projections projections
COPY analytics analytics
COPY automation automation
COPY feeds feeds
COPY api api
COPY readapi readapi
COPY writeapi writeapi
COPY replay replay
COPY crm crm
RUN pip install --no-cache-dir .
COPY --from=web /web/dist /app/web/dist
ENV CRM_HOST=0.0.0.0 CRM_PORT=8000 CRM_WEB_DIR=/app/web/dist
EXPOSE 8000
CMD ["crm", "serve"]
