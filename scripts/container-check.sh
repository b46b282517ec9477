#!/usr/bin/env bash
# Build the CPU image, bring docker-compose.yml up, send /classify and /fill-mask, and check through Prometheus's
# HTTP API that the service is scraped (up == 1) and that its request counter moved. Then take the stack down.
#
#   scripts/container-check.sh          (root; podman, from a debootstrapped base: no registry needed)
#
# Uses ../shared/tools/podman-env.sh for podman, its Docker-compatible socket and the local base image.
# Prometheus comes from Debian's package in a local image (deploy/prometheus/Dockerfile), as prom/prometheus
# cannot be pulled here. Prints image sizes, the answers, `up` and the counter.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# shellcheck source=scripts/lib/podman.sh
. scripts/lib/podman.sh
IMAGE=localhost/roberta-serve:cpu
PROM_IMAGE=localhost/prometheus-debian:latest
COMPOSE=${COMPOSE:-$REPO/.venv/bin/docker-compose}

step "podman and its Docker API socket"
podman_setup --socket
[ -x "$COMPOSE" ] || COMPOSE=$(command -v docker-compose)

step "build $IMAGE (export stage: torch + exporter; runtime: onnxruntime only)"
build_image "$IMAGE" cpu
build_context "$PROM_IMAGE" deploy/prometheus
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'roberta-serve|prometheus-debian|debian-python'

step "the runtime image: no torch, non-root"
podman run --rm --entrypoint python3 "$IMAGE" -c \
  "import importlib.util as u; assert u.find_spec('torch') is None and u.find_spec('transformers') is None; print('no torch, no transformers')"
echo "runs as uid $(podman run --rm --entrypoint id "$IMAGE" -u)"

step "docker compose up"
export ROBERTA_IMAGE=$IMAGE PROMETHEUS_IMAGE=$PROM_IMAGE
cleanup() { "$COMPOSE" down --volumes --timeout 30 >/dev/null 2>&1 || true; }
trap cleanup EXIT
"$COMPOSE" up -d --no-build
for _ in $(seq 1 120); do
  curl -fs http://127.0.0.1:8000/readyz >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS http://127.0.0.1:8000/readyz; echo
container=$(podman ps --filter name=roberta-serve-roberta --format '{{.Names}}' | head -1)
echo "container $container: read-only root $(podman inspect "$container" --format '{{.HostConfig.ReadonlyRootfs}}'), user $(podman exec "$container" id -u)"

step "requests"
curl -fsS http://127.0.0.1:8000/classify -H 'Content-Type: application/json' \
  -d '{"inputs": ["what a wonderful film", "a dull, lifeless mess"]}'; echo
curl -fsS http://127.0.0.1:8000/fill-mask -H 'Content-Type: application/json' \
  -d '{"inputs": "She opened the <mask> and walked in.", "parameters": {"top_k": 3}}'; echo

step "Prometheus"
query() { curl -fsS --get http://127.0.0.1:9090/api/v1/query --data-urlencode "query=$1" \
  | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "none")'; }
up=none; requests=none
for _ in $(seq 1 60); do
  up=$(query 'up{job="roberta"}' 2>/dev/null || echo none)
  requests=$(query 'sum(roberta_requests_total{endpoint=~"/classify|/fill-mask",status="200"})' 2>/dev/null || echo none)
  [ "$up" = 1 ] && [ "$requests" != none ] && [ "${requests%.*}" -ge 2 ] && break
  sleep 1
done
echo "up{job=\"roberta\"} = $up"
echo "sum(roberta_requests_total{endpoint=~\"/classify|/fill-mask\",status=\"200\"}) = $requests"
echo "roberta_model_info: $(query 'roberta_model_info')"
[ "$up" = 1 ] && [ "${requests%.*}" -ge 2 ] || { echo "FAIL: Prometheus did not see the service"; exit 1; }

step "docker compose down (SIGTERM: drain, exit 0)"
"$COMPOSE" stop --timeout 30 roberta
echo "roberta exit code: $(podman inspect "$container" --format '{{.State.ExitCode}}')"
echo "PASS"
