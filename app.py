"""The captionlab web app: compare, train, benchmarks, energy.

    python app.py                                   # the embedded miniature study, at once, on 127.0.0.1:7860
    python app.py --model llava-1.5-7b --checkpoints DIR      # the real thing (GPU)
    python app.py --host 0.0.0.0 --auth user:pass   # reachable from elsewhere, with a login
    python app.py --max-upload-mb 10 --allow-root /data/coco   # upload limit; a folder the forms may name

Nothing is trained or downloaded at start-up; captioners load on the first Compare request.
No public share link is made unless --share is given.
"""

from __future__ import annotations

import argparse
import os
import sys

from captionlab.service.settings import DEFAULT_MAX_NEW_TOKENS

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
QUEUE_MAX_SIZE = 100  # requests waiting beyond this are refused ("queue full") instead of piling up in memory
CONCURRENCY_LIMIT = 1  # per event: captioning shares one model and is serialised anyway


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="registry name (llava-1.5-7b, llava-onevision-7b, qwen2.5-vl-7b, smolvlm-2.2b, "
                                        "...: `python -m captionlab weights status` lists them), cached HF id or local "
                                        "folder; default: the embedded study")
    parser.add_argument("--checkpoints", help="folder with strategies/<key>/ artifacts, clip/, clip_captioner/, "
                                              "gallery/ (default with no --model: checkpoints/embedded)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                        help=f"longest caption generated, in tokens (default {DEFAULT_MAX_NEW_TOKENS})")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port to bind")
    parser.add_argument("--auth", help="user:pass required to open the app")
    parser.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    parser.add_argument("--max-upload-mb", type=float, default=None,
                        help="largest uploaded file, in MB (default: $CAPTIONLAB_MAX_UPLOAD_MB, else 20)")
    parser.add_argument("--allow-root", action="append", default=[], metavar="DIR",
                        help="a folder the Train and Benchmarks forms may name datasets, models and checkpoints "
                             "in (repeatable; the workspace and the served folders always are)")
    return parser.parse_args(argv)


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SystemExit("error: --auth must be user:pass")
    return user, password


def exposure_warning(host: str, auth: tuple[str, str] | None, share: bool) -> str | None:
    """What to tell the user when the app is reachable by others without a login."""
    if auth is not None:
        return None
    if share:
        return ("warning: --share makes a public gradio.live link without --auth: anyone with the link can use the "
                "app, caption with your GPU and launch training runs")
    if host not in LOCAL_HOSTS:
        return (f"warning: serving on {host} without --auth: anyone who can reach this port can use the app, "
                f"caption with your GPU and launch training runs")
    return None


def apply_limits(args: argparse.Namespace) -> int:
    """Make --max-upload-mb and --allow-root the library's settings (environment variables, so the
    service and the jobs it starts see them); returns the upload limit in bytes."""
    from captionlab.safety import images, paths

    if args.max_upload_mb is not None:
        try:
            megabytes = images.parse_upload_mb(args.max_upload_mb)
        except ValueError as exc:
            raise SystemExit(f"error: --max-upload-mb: {exc}") from None
        os.environ[images.MAX_UPLOAD_ENV] = repr(megabytes)
    if args.allow_root:
        extra = [str(os.path.abspath(os.path.expanduser(d))) for d in args.allow_root]
        os.environ[paths.ROOTS_ENV] = os.pathsep.join(filter(None, [os.environ.get(paths.ROOTS_ENV), *extra]))
    return images.max_upload_bytes()


def launch_options(args: argparse.Namespace, auth: tuple[str, str] | None, allowed: list[str],
                   max_upload_bytes: int) -> dict:
    """Keyword arguments of demo.launch: where it listens, who may use it, what it serves, how it looks."""
    from captionlab.ui.style import APP_CSS, app_theme

    options = dict(server_name=args.host, server_port=args.port, auth=auth, share=args.share, allowed_paths=allowed,
                   max_file_size=max_upload_bytes, show_error=False, footer_links=["api"], theme=app_theme(),
                   css=APP_CSS)
    if auth is not None:  # gradio leaves some acting routes (/cancel, /reset) open: the gate closes all but the login
        from starlette.middleware import Middleware

        from captionlab.ui.access import AccessGate

        options["app_kwargs"] = {"middleware": [Middleware(AccessGate)]}
    return options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    auth = parse_auth(args.auth)
    warning = exposure_warning(args.host, auth, args.share)
    if warning:
        print(warning, file=sys.stderr)
    max_upload = apply_limits(args)
    from captionlab.service.settings import settings_for
    from captionlab.ui.app import allowed_paths, build_app

    settings = settings_for(args.model, args.checkpoints, args.device, args.max_new_tokens)
    try:
        from captionlab.service.runs import refresh_registry

        refresh_registry()  # runs whose trainer died while the app was down are marked crashed
    except Exception as exc:
        print(f"warning: could not refresh the runs registry: {exc}", file=sys.stderr)
    demo = build_app(settings)
    demo.queue(default_concurrency_limit=CONCURRENCY_LIMIT, max_size=QUEUE_MAX_SIZE)
    demo.launch(**launch_options(args, auth, allowed_paths(settings), max_upload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
