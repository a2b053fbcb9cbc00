"""The bare ASGI baseline of ``GET /api/image/<name>/``: no framework, no middleware, no auth.

It does what the gateway's show route cannot avoid doing: parse the name from the path, run
``SELECT doc FROM rm_images WHERE name = :name`` through a SQLAlchemy engine (psycopg 3, a pool of
10 like imagesvc's default) in the thread pool, and answer 200 with the pre-encoded document.

Served by uvicorn exactly as ``imagesvc gateway`` serves the gateway (``imagesvc/cli.py``
``_gateway``): a factory, ``log_config=None``, ``access_log=False``, the given worker count, and
uvicorn's automatic choice of loop and HTTP parser (uvloop and httptools are installed).

    python bench/bare_app.py --port 8100 --database-url postgresql+psycopg://postgres@127.0.0.1/db
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PREFIX = "/api/image/"
_JSON = [(b"content-type", b"application/json")]
_NOT_FOUND = b'{"detail":"Image not found"}'


def create_app():
    """The ASGI callable (uvicorn calls this factory once per worker process)."""
    import anyio.to_thread
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["BENCH_BARE_DATABASE_URL"], pool_size=10, max_overflow=10)
    query = text("SELECT doc FROM rm_images WHERE name = :name")

    def lookup(name: str) -> str | None:
        with engine.connect() as conn:
            return conn.execute(query, {"name": name}).scalar()

    async def respond(send, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [*_JSON, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    engine.dispose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path: str = scope["path"]
        if scope["method"] != "GET" or not path.startswith(PREFIX):
            await respond(send, 404, b'{"detail":"Not found."}')
            return
        name = path[len(PREFIX):].rstrip("/")
        doc = await anyio.to_thread.run_sync(lookup, name)
        if doc is None:
            await respond(send, 404, _NOT_FOUND)
            return
        await respond(send, 200, doc.encode())

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description="bare ASGI baseline of GET /api/image/<name>/")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--database-url", default=os.environ.get("IMAGESVC_DATABASE_URL"))
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("--database-url (or IMAGESVC_DATABASE_URL) is required")
    os.environ["BENCH_BARE_DATABASE_URL"] = args.database_url  # inherited by uvicorn's worker processes
    uvicorn.run("bare_app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_config=None, access_log=False, app_dir=str(Path(__file__).resolve().parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
