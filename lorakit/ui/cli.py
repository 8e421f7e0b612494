"""``lorakit ui [--runs DIR] [--port N] [--token T]``: the web dashboard (train, watch, compare,
chat, inspect) on http://127.0.0.1:PORT."""

from __future__ import annotations

import argparse
import os


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("ui", help="web dashboard: train, watch, compare, chat, inspect",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs", help="runs directory: one sub-directory per run (default: ./runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (default: 7860)")
    p.add_argument("--token", default="",
                   help="require this token on every API call (default: $LORAKIT_UI_TOKEN, else none); "
                        "open the page as http://HOST:PORT/?token=TOKEN")
    p.set_defaults(func=run)


def run(args) -> int:
    import uvicorn

    from lorakit.ui.app import create_app

    token = args.token or os.environ.get("LORAKIT_UI_TOKEN", "")
    app = create_app(args.runs, token)
    query = f"/?token={token}" if token else "/"
    print(f"lorakit ui: runs in {app.state.runs.root}; open http://{args.host}:{args.port}{query}",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
