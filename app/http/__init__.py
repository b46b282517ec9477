"""HTTP: the one ASGI app (app.http.app), its routes (app.http.routes), how a request is read (app.http.requests)
and answered (app.http.responses), the OpenAPI document and docs pages, and the uvicorn server (app.http.server)."""
