# Shared by the podman scripts (container-check.sh, kube-check.sh, failover-check.sh); source it.
#   podman_setup [--socket]     podman, a containers.conf for this sandbox, the local base image (and the socket)
#   build_image TAG TARGET      the project's image (Dockerfile target), with the host CA and local wheels if any
#   build_context TAG DIR       a small image from DIR/Dockerfile on the local base (Prometheus, HAProxy)
# Uses ../shared/tools/podman-env.sh: no registry is reachable here, so every image starts from a debootstrapped
# Debian.
REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
TOOLS=${PODMAN_ENV:-$REPO/../shared/tools/podman-env.sh}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-python:bookworm}
HOST_CA=${HOST_CA:-/etc/ssl/certs/ca-certificates.crt}
WHEELS=${WHEELS:-/opt/wheels}  # a local torch CPU wheel, where the machine has one
SOCK=${SOCK:-/run/podman-api.sock}

step() { printf '\n== %s\n' "$*"; }

podman_setup() {
  eval "$(BASE_TAG=$BASE_IMAGE PODMAN_SOCK=$SOCK bash "$TOOLS" "$@" | grep '^export ')"
  if [ "${1:-}" = --socket ]; then
    export DOCKER_HOST=${DOCKER_HOST:-unix://$SOCK}
    # Compose services find each other by name. Podman 4 on its CNI backend needs the dnsname plugin for that;
    # Docker and podman's netavark backend resolve names themselves.
    if [ "$(podman info --format '{{.Host.NetworkBackend}}')" = cni ] && [ ! -x /usr/lib/cni/dnsname ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        golang-github-containernetworking-plugin-dnsname >/dev/null
    fi
  fi
}

build_image() {  # TAG TARGET
  local args=(--network=host --build-arg "BASE_IMAGE=$BASE_IMAGE")
  [ -f "$HOST_CA" ] && args+=(-v "$HOST_CA:/host-ca.crt:ro" --build-arg PIP_CERT=/host-ca.crt)
  [ -d "$WHEELS" ] && args+=(-v "$WHEELS:/wheels:ro" --build-arg PIP_FIND_LINKS=/wheels --build-arg TORCH_INDEX=)
  local started=$SECONDS log=/tmp/podman-build-${2}.log
  podman build --format docker "${args[@]}" --target "$2" -t "$1" "$REPO" >"$log" 2>&1 || { tail -40 "$log"; return 1; }
  echo "built $1 in $((SECONDS - started)) s"
}

build_context() {  # TAG DIR
  local log=/tmp/podman-build-$(basename "$2").log
  podman build --format docker --network=host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$1" "$2" >"$log" 2>&1 \
    || { tail -40 "$log"; return 1; }
  echo "built $1"
}
