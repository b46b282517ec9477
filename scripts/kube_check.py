"""Helpers of scripts/kube-check.sh.

  python scripts/kube_check.py pod IMAGE HOST_PORT < rendered.yaml > deployment.yaml
      The overlay's Deployment as podman kube play can run it on this machine: one replica, the local image, the
      http port published on 127.0.0.1:HOST_PORT, restartPolicy Never (podman would restart a drained
      container; the kubelet does not restart a pod it is deleting). Nothing else is changed.
  python scripts/kube_check.py drain URL CONTAINER GRACE_S
      Keeps /classify busy, sends the container SIGTERM as the kubelet would after the preStop sleep, watches
      /readyz, and reports what every request got until the server is gone; SIGKILL at the grace period.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import yaml

LISTENER_CLOSE_S = 0.05  # how long before the first refused connection a reset counts as the listener's closing
TEXTS = ["a gripping, beautifully acted film", "tedious and far too long", "fine", "I loved every minute of it"] * 4


def pod(image: str, host_port: int) -> None:
    (deployment,) = [item for item in yaml.safe_load_all(sys.stdin) if item and item["kind"] == "Deployment"]
    deployment["spec"]["replicas"] = 1
    # A pod the kubelet stops is not started again; podman would restart an Always container that exits.
    deployment["spec"]["template"]["spec"]["restartPolicy"] = "Never"
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        container["image"] = image
        for port in container.get("ports", []):
            if port["name"] == "http":
                port.update(hostPort=host_port, hostIP="127.0.0.1")
    yaml.safe_dump(deployment, sys.stdout, sort_keys=False)


async def drain(url: str, container: str, grace_s: float) -> int:
    records: list[tuple[float, float, str]] = []  # (sent, answered, outcome), times from SIGTERM
    readiness: list[tuple[float, str]] = []
    stop = asyncio.Event()
    term_at = 0.0

    def now() -> float:
        return time.monotonic() - term_at if term_at else -(1e9)

    async def worker(client: httpx.AsyncClient) -> None:
        refused_since = None
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = await client.post(f"{url}/classify", json={"inputs": TEXTS})
                retry = "" if response.status_code == 200 else f" retry-after={response.headers.get('retry-after')}"
                outcome = f"{response.status_code}{retry}"
                refused_since = None
            except httpx.ConnectError:
                outcome = "refused"  # never accepted: nothing was listening any more
                refused_since = refused_since or time.monotonic()
                if term_at and time.monotonic() - refused_since > 1.0:
                    return
                await asyncio.sleep(0.05)
            except httpx.HTTPError as exc:
                outcome = f"lost ({type(exc).__name__})"  # accepted, then no answer
            if term_at:
                records.append((sent - term_at, time.monotonic() - term_at, outcome))

    async def prober(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                status = str((await client.get(f"{url}/readyz")).status_code)
            except httpx.HTTPError:
                status = "refused"
            if term_at:
                readiness.append((now(), status))
            await asyncio.sleep(0.1)

    limits = httpx.Limits(max_keepalive_connections=8)
    async with httpx.AsyncClient(timeout=grace_s + 5, limits=limits) as client, httpx.AsyncClient(timeout=2) as probe:
        tasks = [asyncio.create_task(worker(client)) for _ in range(4)] + [asyncio.create_task(prober(probe))]
        await asyncio.sleep(3)  # load running, keep-alive connections open
        term_at = time.monotonic()
        subprocess.run(["podman", "kill", "--signal", "TERM", container], check=True, capture_output=True)
        waiter = await asyncio.create_subprocess_exec(
            "podman", "wait", container, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            out, _ = await asyncio.wait_for(waiter.communicate(), timeout=grace_s)
            exit_code, exit_after = out.decode().strip(), now()
        except TimeoutError:
            subprocess.run(["podman", "kill", "--signal", "KILL", container], capture_output=True)
            exit_code, exit_after = "killed at the grace period", grace_s
        await asyncio.gather(*tasks[:-1])
        stop.set()
        await tasks[-1]

    first_unready = next((t for t, status in readiness if status != "200"), None)
    answered = [r for r in records if r[2] == "200"]
    summary = {
        "exit_code": exit_code,
        "exit_after_sigterm_s": round(exit_after, 2),
        "readyz_not_200_after_s": None if first_unready is None else round(first_unready, 2),
        "last_200_answered_after_s": round(max((r[1] for r in answered), default=0.0), 2),
        "requests_after_sigterm": len(records),
        "outcomes": {outcome: sum(1 for r in records if r[2] == outcome) for outcome in sorted({r[2] for r in records})},
        "not_200_sent_at_s": {
            outcome: [round(r[0], 3) for r in records if r[2] == outcome][:10]
            for outcome in sorted({r[2] for r in records} - {"200"})
        },
    }
    # The listener closes when the drain is over: a connection the kernel completed in the instant before (in
    # its accept queue, never read by the server) is reset. Behind Kubernetes' endpoints or a balancer nothing
    # is sent by then; here, straight at the pod, a client that reconnects in a loop can land in that instant.
    closed_at = min((r[0] for r in records if r[2] == "refused"), default=None)
    lost = [r for r in records if r[2].startswith("lost")]
    at_close = [r for r in lost if closed_at is not None and closed_at - LISTENER_CLOSE_S <= r[0] <= closed_at]
    summary["listener_closed_after_s"] = None if closed_at is None else round(closed_at, 3)
    summary["lost_at_listener_close"] = len(at_close)
    summary["lost_otherwise"] = len(lost) - len(at_close)
    print(json.dumps(summary, indent=2))
    bad = [r for r in records if r[2] not in ("200", "refused") and not r[2].startswith(("503 retry-after=", "lost"))]
    return 0 if exit_code == "0" and len(lost) == len(at_close) and not bad else 1


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "pod":
        pod(args[0], int(args[1]))
    elif command == "drain":
        sys.exit(asyncio.run(drain(args[0], args[1], float(args[2]))))
    else:
        sys.exit(__doc__)
