"""`python -m app --classify-model DIR ...`: the same settings as the ROBERTA_* variables, as flags."""

import uvicorn

from app.main import create_app
from app.settings import Settings


def main() -> None:
    settings = Settings(_cli_parse_args=True, _cli_kebab_case=True, _cli_prog_name="python -m app")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    main()
