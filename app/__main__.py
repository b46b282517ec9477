"""`python -m app --classify-model DIR ...`: the same settings as the ROBERTA_* variables, as flags.

Settings and models are checked before the port is bound: a bad setting, a missing or
corrupt model exits with status 1 and one line saying what to change. SIGTERM (or Ctrl-C)
drains (see app.server): readiness goes 503, new requests get 503, every accepted request
is answered, then the process exits 0. A second signal skips the wait.
"""

from __future__ import annotations

from app.main import configure_logging, create_app, load_or_exit
from app.server import DrainingServer, uvicorn_config


def main() -> None:
    settings, state = load_or_exit(cli=True)
    configure_logging(settings.log_level)
    app = create_app(state=state)
    DrainingServer(uvicorn_config(app, state), state).run()


if __name__ == "__main__":
    main()
