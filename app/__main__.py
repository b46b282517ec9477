"""`python -m app --classify-model DIR ...`: the same settings as the ROBERTA_* variables, as flags.

Settings, then the port, then the models are checked before the service listens: a bad setting,
a taken port, a missing or corrupt model exits with status 1 and one line saying what to change. SIGTERM (or Ctrl-C)
drains (see app.http.server): readiness goes 503, new requests get 503, every accepted request
is answered, then the process exits 0. A second signal skips the wait. With `--processes N`
a supervisor runs N such processes on the port (see app.serving.supervisor).
"""

from __future__ import annotations

import sys

from app.settings import settings_or_exit


def main() -> None:
    settings = settings_or_exit(cli=True)
    from app.main import serve, serve_member

    if settings.processes > 1:
        from app.serving.supervisor import Supervisor

        sys.exit(Supervisor(settings, member=serve_member).run())
    serve(settings)


if __name__ == "__main__":
    main()
