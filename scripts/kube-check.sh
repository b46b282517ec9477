#!/usr/bin/env bash
# Run the Deployment that `kubectl kustomize deploy/k8s/overlays/cpu` renders with `podman kube play` (no
# cluster): its pod comes up from the project's image, becomes ready, answers /classify, and drains on SIGTERM
# as the spec promises. Prints what podman kept of the spec, the answers, and the drain's timeline.
#
#   scripts/kube-check.sh          (root; podman from ../shared/tools/podman-env.sh; about 1 minute once built)
#
# What podman 4.3's kube play honours of the pod spec (its man page's support table, and what this script sees):
#   livenessProbe            yes, as the container's healthcheck: `curl -f` on the probe's path, inside the container
#                            (a port name becomes port 0: the probes give the number); systemd runs it on its timer
#   readinessProbe, startupProbe   no: this script waits on /readyz itself, as the kubelet's probe would
#   lifecycle.preStop, terminationGracePeriodSeconds   no: the script does what the kubelet does after the
#       preStop sleep (SIGTERM, then SIGKILL when the grace period is over), with the spec's numbers
#   container securityContext (user, read-only root, capabilities, no privilege escalation), env (valueFrom
#       resourceFieldRef too), resources, emptyDir volumes: yes
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
# shellcheck source=scripts/lib/podman.sh
. scripts/lib/podman.sh
IMAGE=localhost/roberta-serve:cpu
OVERLAY=${OVERLAY:-deploy/k8s/overlays/cpu}
PORT=${PORT:-18000}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
WORK=$(mktemp -d /tmp/kube-check.XXXX)

step "podman"
podman_setup
# A pod's infra container is built locally from catatonit (no pause image can be pulled here).
command -v catatonit >/dev/null || [ -x /usr/libexec/podman/catatonit ] \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends catatonit >/dev/null
[ "${SKIP_BUILD:-}" = 1 ] && podman image exists "$IMAGE" || build_image "$IMAGE" cpu

step "render $OVERLAY; its Deployment for podman (1 replica, $IMAGE, port on 127.0.0.1:$PORT)"
kubectl kustomize "$OVERLAY" >"$WORK/rendered.yaml"
"$PYTHON" scripts/kube_check.py pod "$IMAGE" "$PORT" <"$WORK/rendered.yaml" >"$WORK/deployment.yaml"
read -r GRACE SLEEP < <("$PYTHON" -c '
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))["spec"]["template"]["spec"]
c = d["containers"][0]
print(d["terminationGracePeriodSeconds"], c["lifecycle"]["preStop"]["exec"]["command"][1])' "$WORK/deployment.yaml")
echo "terminationGracePeriodSeconds=$GRACE, preStop sleep=$SLEEP s"

cleanup() { podman kube down "$WORK/deployment.yaml" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
started=$SECONDS
podman kube play "$WORK/deployment.yaml" >"$WORK/play.log" 2>&1 || { cat "$WORK/play.log"; exit 1; }
CONTAINER=$(podman ps --format '{{.Names}}' \
  | grep -- '-roberta$' | head -1)
echo "pod up: container $CONTAINER"

step "what podman kept of the spec"
podman inspect "$CONTAINER" --format \
  'user={{.Config.User}} read-only root={{.HostConfig.ReadonlyRootfs}} cap-drop={{.HostConfig.CapDrop}} no-new-privileges={{.HostConfig.SecurityOpt}}'
podman inspect "$CONTAINER" --format 'healthcheck (from livenessProbe): {{json .Config.Healthcheck}}'
podman inspect "$CONTAINER" --format 'stop timeout: {{.Config.StopTimeout}} s (the spec grace period is '"$GRACE"' s: not used)'
podman exec "$CONTAINER" sh -c 'echo "env: ROBERTA_CONCURRENT_RUNS=$ROBERTA_CONCURRENT_RUNS (from requests.cpu) ROBERTA_INTRA_OP_THREADS=$ROBERTA_INTRA_OP_THREADS ROBERTA_SHUTDOWN_DELAY_S=$ROBERTA_SHUTDOWN_DELAY_S"; echo "uid $(id -u)"; touch /x 2>/dev/null && echo "root is writable" || echo "root is read-only"'

step "readiness: /readyz (the startup and readiness probes' path)"
for _ in $(seq 1 300); do
  curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$PORT/readyz"; echo "  (ready $((SECONDS - started)) s after kube play)"
# podman runs healthchecks from systemd timers; without systemd (as here) it never starts them on its own.
podman healthcheck run "$CONTAINER" >/dev/null && health=healthy || health=unhealthy
echo "podman healthcheck (the livenessProbe), run by hand: $health"
curl -fs "http://127.0.0.1:$PORT/models" | "$PYTHON" -c '
import json, sys
for m in json.load(sys.stdin)["models"]:
    print("model {name}: {task}, {precision}, memory {mb:.0f} MB".format(mb=(m.get("memory_bytes") or 0) / 1e6, **m))'
echo "container memory: $(podman stats --no-stream --format '{{.MemUsage}}' "$CONTAINER")"

step "/classify"
curl -fsS "http://127.0.0.1:$PORT/classify" -H 'Content-Type: application/json' \
  -d '{"inputs": ["what a wonderful film", "a dull, lifeless mess"]}'; echo

step "SIGTERM under load (what the kubelet sends after the preStop sleep; SIGKILL after the rest of the grace period)"
"$PYTHON" scripts/kube_check.py drain "http://127.0.0.1:$PORT" "$CONTAINER" "$((GRACE - ${SLEEP%.*}))"
podman logs "$CONTAINER" 2>&1 | grep -iE 'drain|shutting|sigterm|finished|timeout' | tail -5
echo "PASS"
