"""`python -m app --classify-model DIR ...`: the same settings as the ROBERTA_* variables, as flags.

Settings, then the port, then the models are checked before the service listens: a bad setting,
a taken port, a missing or corrupt model exits with status 1 and one line saying what to change. SIGTERM (or Ctrl-C)
drains (see app.server): readiness goes 503, new requests get 503, every accepted request
is answered, then the process exits 0. A second signal skips the wait. With `--processes N`
a supervisor runs N such processes on the port (see app.supervisor).
"""

from __future__ import annotations

import sys

from app.settings import settings_or_exit


def main() -> None:
    settings = settings_or_exit(cli=True)
    if settings.processes > 1:
        from app.supervisor import Supervisor  # imports no model runtime: the supervisor only watches

        sys.exit(Supervisor(settings).run())
    from app.main import create_app, state_or_exit
    from app.http.server import DrainingServer, uvicorn_config
    from app.supervisor import bind_or_exit, claim_port

    # The port first: a taken one is said in one line before any model loads.
    claim = claim_port(settings.port)  # noqa: F841 (held until the process ends)
    sock = bind_or_exit(settings.host, settings.port, reuse_port=False)
    state = state_or_exit(settings)
    app = create_app(state=state)
    DrainingServer(uvicorn_config(app, state), state).run(sockets=[sock])


if __name__ == "__main__":
    main()
