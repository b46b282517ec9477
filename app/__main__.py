"""`python -m app --classify-model DIR ...`: the same settings as the ROBERTA_* variables, as flags.

Models load before the port is bound, so a missing or corrupt model exits non-zero
with one line saying which file and what to do. SIGTERM (or Ctrl-C) drains: readiness
goes 503, new requests get 503, every accepted request is answered, then the process
exits 0. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from types import FrameType

import uvicorn

from app.main import configure_logging, create_app
from app.metrics import Metrics
from app.model_folder import ModelFolderError
from app.settings import Settings
from app.state import AppState

log = logging.getLogger("app")


class DrainingServer(uvicorn.Server):
    """uvicorn closes its sockets on the first signal; this answers 503 while accepted work finishes first."""

    def __init__(self, config: uvicorn.Config, state: AppState) -> None:
        super().__init__(config)
        self.state = state
        self._draining = False
        self._drain_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or not self.started or self._loop is None:
            self.should_exit = self.force_exit = True  # a second signal, or not serving yet: stop now
            return
        self._draining = True
        # A signal handler can interrupt the loop mid-step: hand the work over instead of touching the loop here.
        self._loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)

    def _start_drain(self, signal_name: str) -> None:
        log.info("received %s: draining", signal_name)
        self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit(), name="drain")

    async def _drain_then_exit(self) -> None:
        settings = self.state.settings
        await self.state.drain(settings.shutdown_delay_s, settings.shutdown_timeout_s)
        self.should_exit = True


def main() -> None:
    settings = Settings(_cli_parse_args=True, _cli_kebab_case=True, _cli_prog_name="python -m app")
    configure_logging(settings.log_level)
    try:
        state = AppState.build(settings, Metrics())
    except ModelFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    config = uvicorn.Config(create_app(state=state), host=settings.host, port=settings.port, log_level=settings.log_level)
    DrainingServer(config, state).run()


if __name__ == "__main__":
    main()
