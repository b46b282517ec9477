#!/usr/bin/env bash
# Three replicas behind HAProxy under load, one SIGKILLed at 20 s and another SIGTERMed at 40 s: nothing may be
# lost, every answer that is not 200 must be retryable (429/503 with Retry-After), and Prometheus (DNS service
# discovery) must see 3, then 2, then 1 replica up. Then every query of the Grafana dashboard is run against that
# Prometheus and must return data. Prints the report of scripts/failover_load.py and the dashboard check.
#
#   scripts/failover-check.sh          (root; podman and its Docker API socket; about 3 minutes once built)
#
# The stack is deploy/failover/docker-compose.yml; traffic goes only to 127.0.0.1 and the compose network.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# shellcheck source=scripts/lib/podman.sh
. scripts/lib/podman.sh
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
COMPOSE=${COMPOSE:-$REPO/.venv/bin/docker-compose}
export ROBERTA_IMAGE=localhost/roberta-serve:cpu PROMETHEUS_IMAGE=localhost/prometheus-debian:latest \
  HAPROXY_IMAGE=localhost/roberta-haproxy:latest
FILE=deploy/failover/docker-compose.yml
API=http://127.0.0.1:8080
PROM=http://127.0.0.1:9091

step "podman, its Docker API socket, the images"
podman_setup --socket
[ -x "$COMPOSE" ] || COMPOSE=$(command -v docker-compose)
if [ "${SKIP_BUILD:-}" != 1 ] || ! podman image exists "$ROBERTA_IMAGE"; then build_image "$ROBERTA_IMAGE" cpu; fi
build_context "$PROMETHEUS_IMAGE" deploy/prometheus
build_context "$HAPROXY_IMAGE" deploy/haproxy

step "docker compose up: 3 replicas, HAProxy, Prometheus"
compose() { "$COMPOSE" -f "$FILE" "$@"; }
cleanup() { compose down --volumes --timeout 30 >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
compose up -d --no-build
mapfile -t REPLICAS < <(podman ps --format '{{.Names}}' | grep -E '^roberta-failover-roberta-[0-9]+$' | sort)
echo "replicas: ${REPLICAS[*]}"
[ "${#REPLICAS[@]}" = 3 ] || { echo "FAIL: expected 3 replicas"; exit 1; }

query() { curl -fsS --get "$PROM/api/v1/query" --data-urlencode "query=$1" \
  | "$PYTHON" -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "none")'; }
started=$SECONDS
for _ in $(seq 1 180); do
  up=$(query 'sum(up{job="roberta"})' 2>/dev/null || echo none)
  ready=$(query 'sum(roberta_ready)' 2>/dev/null || echo none)
  [ "$up" = 3 ] && [ "$ready" = 3 ] && curl -fs "$API/readyz" >/dev/null 2>&1 && break
  sleep 1
done
echo "Prometheus: $up replicas up, $ready ready ($((SECONDS - started)) s); through HAProxy: $(curl -fsS "$API/readyz")"
[ "$up" = 3 ] && [ "$ready" = 3 ] || { compose logs --tail 20; echo "FAIL: not every replica came up"; exit 1; }
curl -fsS "$API/classify" -H 'Content-Type: application/json' -d '{"inputs": "what a wonderful film"}'; echo

step "60 s of load; SIGKILL ${REPLICAS[0]} at 20 s, SIGTERM ${REPLICAS[1]} at 40 s"
status=0
"$PYTHON" scripts/failover_load.py --url "$API" --prometheus "$PROM" --kill "${REPLICAS[0]}" --term "${REPLICAS[1]}" \
  ${CONCURRENCY:+--concurrency "$CONCURRENCY"} | tee /tmp/failover-report.json || status=1
echo "exit codes: ${REPLICAS[0]} $(podman inspect "${REPLICAS[0]}" --format '{{.State.ExitCode}}') (SIGKILL)," \
  "${REPLICAS[1]} $(podman inspect "${REPLICAS[1]}" --format '{{.State.ExitCode}}') (SIGTERM: drained)"
echo "HAProxy retries: $(query 'sum(haproxy_backend_retry_warnings_total{proxy="roberta"})')," \
  "redispatches: $(query 'sum(haproxy_backend_redispatch_warnings_total{proxy="roberta"})')"

step "every Grafana panel's query against this Prometheus"
"$PYTHON" scripts/dashboard_check.py --prometheus "$PROM" deploy/grafana/roberta-serve.json || status=1
[ "$status" = 0 ] && echo PASS || echo FAIL
exit "$status"
