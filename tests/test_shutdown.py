"""SIGTERM against a real `python -m app` under load: every accepted request is answered, then the process exits 0."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import httpx

from server import ServerProcess

WORKERS = 16
DELAY_S = 1.0


def test_sigterm_drains_answers_everything_accepted_and_exits_0(exported_classifier):
    flags = ["--classify-model", str(exported_classifier), "--max-wait-ms", "50", "--max-batch-size", "8"]
    outcomes: list[tuple[float, object]] = []  # (sent at, status code or what went wrong)

    with ServerProcess(*flags, "--shutdown-delay-s", str(DELAY_S)) as process:

        def worker() -> None:
            # A fresh connection per request: a refusal then shows as a refused connect, never as a lost answer.
            with httpx.Client(headers={"Connection": "close"}, timeout=30) as client:
                while True:
                    sent = time.monotonic()
                    try:
                        response = client.post(f"{process.url}/classify", json={"inputs": ["a good film", "dull"]})
                    except httpx.ConnectError:
                        outcomes.append((sent, "refused"))
                        return
                    except httpx.HTTPError as exc:
                        outcomes.append((sent, f"lost: {type(exc).__name__}"))
                        return
                    outcomes.append((sent, response.status_code))
                    if response.status_code != 200:
                        assert response.json()["error_type"] == "not_ready"
                        assert response.headers["retry-after"]
                        return

        threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        assert httpx.get(f"{process.url}/readyz").status_code == 200
        sigterm_at = time.monotonic()
        process.signal(signal.SIGTERM)
        time.sleep(DELAY_S / 2)
        readiness = httpx.get(f"{process.url}/readyz")  # within the delay: unready, still serving
        for thread in threads:
            thread.join(timeout=60)
        exit_code = process.wait(timeout=60)

    assert readiness.status_code == 503 and readiness.json()["error_type"] == "not_ready"
    results = Counter(result for _, result in outcomes)
    assert not [r for r in results if str(r).startswith("lost")], results
    assert set(results) <= {200, 503, "refused"}, results
    assert all(result == 200 for sent, result in outcomes if sent < sigterm_at), results
    served_while_draining = [r for sent, r in outcomes if sigterm_at < sent < sigterm_at + DELAY_S / 2 and r == 200]
    assert served_while_draining, "requests during shutdown_delay_s are still answered"
    assert results[503] + results["refused"] == WORKERS  # every worker was refused at the end, none lost
    assert exit_code == 0
    assert "received SIGTERM: draining" in process.output
