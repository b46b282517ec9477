"""The API docs pages (/docs, /redoc) and their assets, served without a CDN.

The assets come from the pinned `fastapi-offline` package (Swagger UI and ReDoc, nothing
else of it is used), the pages load nothing from another host and send no font request,
and they follow ROBERTA_PROTECT_HEALTH_AND_METRICS like the other operational routes.
`ROBERTA_DOCS=false` leaves them out altogether.
"""

from __future__ import annotations

import html
from importlib.resources import files
from pathlib import Path

from starlette.responses import FileResponse, HTMLResponse, Response

from app.errors import NotFound

ASSETS = "/docs/assets/"
ASSET_FOLDER = Path(str(files("fastapi_offline") / "static"))
ASSET_FILES = frozenset(path.name for path in ASSET_FOLDER.iterdir() if path.is_file())

SWAGGER = """<!DOCTYPE html>
<html>
<head>
<link type="text/css" rel="stylesheet" href="{assets}swagger-ui.css">
<link rel="shortcut icon" href="{assets}favicon.png">
<title>{title} - Swagger UI</title>
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}swagger-ui-bundle.js"></script>
<script>
const ui = SwaggerUIBundle({{url: '/openapi.json', dom_id: '#swagger-ui', layout: 'BaseLayout', deepLinking: true,
  showExtensions: true, showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset]}})
</script>
</body>
</html>
"""

REDOC = """<!DOCTYPE html>
<html>
<head>
<title>{title} - ReDoc</title>
<meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="shortcut icon" href="{assets}favicon.png">
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<noscript>ReDoc requires Javascript to function. Please enable it to browse the documentation.</noscript>
<redoc spec-url="/openapi.json"></redoc>
<script src="{assets}redoc.standalone.js"></script>
</body>
</html>
"""


def swagger_page(title: str) -> Response:
    return HTMLResponse(SWAGGER.format(assets=ASSETS, title=html.escape(title)))


def redoc_page(title: str) -> Response:
    return HTMLResponse(REDOC.format(assets=ASSETS, title=html.escape(title)))


def asset(path: str) -> Response:
    """One of the package's asset files by its name; nothing else (no path is joined from the request)."""
    name = path[len(ASSETS):]
    if name not in ASSET_FILES:
        raise NotFound(f"no docs asset {name[:60]!r}")
    return FileResponse(ASSET_FOLDER / name)
