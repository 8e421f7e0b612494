"""``lorakit serve``: flags generated from ServeConfig, and the uvicorn runner with graceful
shutdown (stop taking requests, let in-flight ones finish for ``--shutdown-timeout`` seconds,
fail the rest with 503)."""

from __future__ import annotations

import argparse
import logging

from lorakit.flags import add_flags, field_specs
from lorakit.serve.config import ServeConfig, fields


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a base model and many LoRA adapters (OpenAI-compatible API)",
        description="Serve one base model and any number of PEFT LoRA adapters behind an "
                    "OpenAI-compatible HTTP API; the request's 'model' field picks the adapter.")
    add_flags(parser, field_specs(ServeConfig))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lorakit.serve.server import build_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServeConfig(**{f.name: getattr(args, f.name) for f in fields()})
    server = build_server(config)
    serve(server)
    return 0


def make_uvicorn(server, host: str, port: int, log_level: str = "info"):
    """A uvicorn server for ``server`` whose shutdown first closes the engine to new requests."""
    import uvicorn

    from lorakit.serve.api import create_app

    class _Uvicorn(uvicorn.Server):
        async def shutdown(self, sockets=None):
            server.engine.close()
            await super().shutdown(sockets)

    config = uvicorn.Config(create_app(server), host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=server.config.shutdown_timeout)
    return _Uvicorn(config)


def serve(server) -> None:
    make_uvicorn(server, server.config.host, server.config.port).run()
