# mcp-warden gateway image.
#
#   docker build -t mcp-warden .
#   docker run --read-only --tmpfs /tmp \
#     -v "$PWD/config:/etc/mcp-warden:ro" -v "$PWD/keys:/var/run/mcp-warden/keys:ro" \
#     -p 8080:8080 -p 9090:9090 mcp-warden
#
# The process writes nothing to the image's file system: the config, the policies and the
# signing keys are mounted read-only, the tool pins live in Redis (store: redis://…), the audit
# records go to stdout. It runs with a read-only root file system (docker run --read-only,
# Kubernetes readOnlyRootFilesystem). docs/deploy.md has the whole deployment.

ARG NODE_IMAGE=node:22-bookworm-slim

# Build: the same steps as CI (.ci/run): install from the lock file with CI's flags, then
# `npm run build` (tsc). --ignore-scripts only skips `prepare` (itself `npm run build`), which
# would run before the sources are copied; no dependency has an install script.
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY bin ./bin
COPY lib ./lib
COPY plugins ./plugins
RUN npm run build

# The production dependencies alone, without install scripts (none is needed at run time).
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

# Runtime: what runs, owned by root and read-only to the process.
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json ./
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY cedar ./cedar
COPY rules ./rules
# 1000 is the `node` user of the official image; numeric so that Kubernetes' runAsNonRoot can
# check it.
USER 1000:1000
# listen.port and admin.listen.port of deploy/kubernetes/configmap.yaml
EXPOSE 8080 9090
# Liveness for docker and compose (Kubernetes uses its own probes): GET /healthz on the admin
# listener; set MCPW_HEALTHCHECK_URL when the config has another admin port or no admin listener.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch(process.env.MCPW_HEALTHCHECK_URL || 'http://127.0.0.1:9090/healthz', { signal: AbortSignal.timeout(4000) }).then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "dist/bin/mcp-warden.js"]
CMD ["start", "--config", "/etc/mcp-warden/config.yaml"]
