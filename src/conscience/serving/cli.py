"""``conscience serve``: the OpenAI-compatible server (registered by ``conscience.cli``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..config import choices_of
from ..conscience_config import ConscienceConfig
from ..errors import ConscienceError
from ..log import log, warn
from ..redact import redact
from .config import UPSTREAM_TOP_LOGPROBS_FLOOR, ServeConfig

# ServeConfig keys set by a flag of the same name; a flag left out keeps the value of --config.
_SERVE_KEYS = ("host", "port", "on_error", "on_unresolved", "review_timeout", "review", "expose_trace", "model_name",
               "upstream", "upstream_model", "upstream_timeout", "upstream_top_logprobs", "max_body_bytes",
               "max_prompt_tokens", "max_tokens", "max_logprobs", "max_batch", "max_queue", "header_timeout",
               "body_timeout", "learn", "learn_dir", "learn_every",
               "learn_steps", "learn_margin", "learn_lora_r", "probe_size")


def register(subparsers) -> None:
    from ..cli import add_conscience_options

    p = subparsers.add_parser(
        "serve", conflict_handler="resolve",
        help="an OpenAI-compatible chat server with the conscience in front of the model",
        description="Serve /v1/chat/completions with every draft reviewed by the model's frozen copy. "
                    "Streams start only after the review.")
    add_conscience_options(p)
    # The conscience's use (chat/content/code, --mode elsewhere) is --use here: --mode is the
    # deprecated name of --action, which this group's option replaces (conflict_handler="resolve").
    # --config and --set take ServeConfig keys here, the conscience's under conscience:.
    p.add_argument("--use", dest="mode", choices=choices_of(ConscienceConfig, "mode"),
                   help="what the model is used for (the drafting system prompt and framings)")
    s = p.add_argument_group("server")
    s.add_argument("--config", help="YAML file of ServeConfig keys, the conscience's nested under conscience: "
                                    "(e.g. configs/serve.yaml); flags and --set override it")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any ServeConfig key, e.g. port=8001 or conscience.threshold=0.4")
    s.add_argument("--action", choices=choices_of(ServeConfig, "action"),
                   help="what the server does with a verdict: revise (default): answer with the best reviewed "
                        "candidate; block: withhold flagged drafts (finish_reason content_filter); monitor: only "
                        "annotate")
    s.add_argument("--mode", dest="deprecated_mode", choices=choices_of(ServeConfig, "action"),
                   help="deprecated alias of --action, kept for one release; use --action")
    s.add_argument("--on-error", choices=choices_of(ServeConfig, "on_error"),
                   help="closed (default): a failed or timed-out review withholds the draft; open: release it "
                        "marked unchecked")
    s.add_argument("--on-unresolved", choices=choices_of(ServeConfig, "on_unresolved"),
                   help="--action revise, when every candidate stays flagged: block (default) withholds the answer "
                        "(finish_reason content_filter); release sends the best one marked unresolved")
    s.add_argument("--review-timeout", type=float, help="seconds a review may take (default 30)")
    s.add_argument("--host", help="bind address (default 127.0.0.1: loopback only)")
    s.add_argument("--port", type=int, help="default 8000")
    s.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (visible in ps: prefer "
                                     "--api-key-file or the CONSCIENCE_API_KEY environment variable)")
    s.add_argument("--api-key-file", help="read the API key from this file (its first line)")
    s.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name this server answers besides its bind address (repeatable; '*' for any)")
    s.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (scheme://host:port) allowed to call the API from a browser (repeatable)")
    s.add_argument("--no-conscience", dest="review", action="store_false", default=None,
                   help="serve the bare model (a baseline, or an upstream with logprobs for another server)")
    s.add_argument("--model-name", help="the model id reported to clients")
    s.add_argument("--model-alias", action="append", default=[], metavar="NAME",
                   help="another model name requests may use (repeatable); other names get 404 model_not_found")
    s.add_argument("--expose-trace", action="store_true", default=None,
                   help="include the draft and the alternatives in each response's conscience object")
    s.add_argument("--upstream", help="URL of an OpenAI-compatible server that drafts and reviews (log-probs)")
    s.add_argument("--upstream-model", help="model id at the upstream (default: its first listed model)")
    s.add_argument("--upstream-api-key", help="visible in ps: prefer --upstream-api-key-file or "
                                              "CONSCIENCE_UPSTREAM_API_KEY")
    s.add_argument("--upstream-api-key-file", help="read the upstream's API key from this file (its first line)")
    s.add_argument("--upstream-timeout", type=float, help="seconds (default 120)")
    s.add_argument("--upstream-top-logprobs", type=int,
                   help=f"top log-probs asked for per review (default 20, at least {UPSTREAM_TOP_LOGPROBS_FLOOR})")
    s.add_argument("--max-body-bytes", type=int, help="default 1000000")
    s.add_argument("--max-prompt-tokens", type=int, help="default 4096")
    s.add_argument("--max-tokens", type=int, help="the largest max_tokens a request may ask for (default 1024)")
    s.add_argument("--max-logprobs", type=int, help="the largest top_logprobs a request may ask for (default 20)")
    s.add_argument("--max-batch", type=int, help="concurrent requests drafted and reviewed together (default 8)")
    s.add_argument("--max-queue", type=int, help="requests that may wait for the model; one more gets 429 with "
                                                 "Retry-After (default 256)")
    s.add_argument("--header-timeout", type=float, help="seconds a client has to send a request's headers (default 10)")
    s.add_argument("--body-timeout", type=float, help="seconds a client has to send a request's body (default 30)")
    learn = p.add_argument_group("learning from traffic")
    learn.add_argument("--learn", action="store_true", default=None,
                       help="record preference pairs from flagged drafts and update a LoRA adapter in the background")
    learn.add_argument("--learn-dir", help="pairs, adapters and state live here (default conscience-learn)")
    learn.add_argument("--learn-every", type=int, help="pairs between two updates (default 32)")
    learn.add_argument("--learn-steps", type=int, help="default 20")
    learn.add_argument("--learn-margin", type=float,
                       help="an alternative must beat the flagged draft's score by this much (default 0.1)")
    learn.add_argument("--learn-lora-r", type=int, help="default 8")
    learn.add_argument("--probe-size", type=int, help="EM probe questions asked before a swap (default 8)")
    p.set_defaults(handler=cmd_serve)


def read_key(value: str | None, path: str | None, option: str) -> str | None:
    """A secret from the option or a file (one source only); None when neither is given."""
    if value is not None and path is not None:
        raise ConscienceError(f"serve: give {option} or {option}-file, not both")
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConscienceError(f"serve: cannot read {option}-file {path}: {exc.__class__.__name__}") from None
        if not lines or not lines[0].strip():
            raise ConscienceError(f"serve: {option}-file {path} is empty")
        return lines[0].strip()
    return value


def serve_action(args: argparse.Namespace) -> str | None:
    """``--action``, or the deprecated ``--mode`` (with a warning); None when neither is given."""
    if args.deprecated_mode is None:
        return args.action
    if args.action is not None and args.action != args.deprecated_mode:
        raise ConscienceError(f"serve: --action {args.action} and --mode {args.deprecated_mode} disagree "
                              "(--mode is the deprecated name of --action: give only --action)")
    warn(f"serve --mode is deprecated and will be removed in the next release: use --action {args.deprecated_mode}")
    return args.deprecated_mode


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """ServeConfig from the environment's API keys, then --config, then the flags given, then --set:
    every value checked, and every bad one refused, before a model loads."""
    from ..cli import conscience_flags
    from ..config import load_config, merge_values, parse_overrides

    flags = {k: getattr(args, k) for k in _SERVE_KEYS if getattr(args, k, None) is not None}
    flags.update({f"conscience.{k}": v for k, v in conscience_flags(args).items()})
    lists = {"model_aliases": args.model_alias, "allowed_hosts": args.allowed_host, "cors_origins": args.cors_origin}
    flags.update({k: v for k, v in lists.items() if v})  # repeatable flags: none given keeps the config's
    given = {"action": serve_action(args), "api_key": read_key(args.api_key, args.api_key_file, "--api-key"),
             "upstream_api_key": read_key(args.upstream_api_key, args.upstream_api_key_file, "--upstream-api-key")}
    flags.update({k: v for k, v in given.items() if v is not None})
    environment = {k: os.environ.get(name) for k, name in (("api_key", "CONSCIENCE_API_KEY"),
                                                           ("upstream_api_key", "CONSCIENCE_UPSTREAM_API_KEY"))}
    cfg = load_config(ServeConfig, args.config, merge_values(flags, parse_overrides(args.set)),
                      base={k: v for k, v in environment.items() if v}, name="serve")
    if cfg.conscience.framings_file or cfg.conscience.framings or cfg.conscience.question:
        from ..verdict.factory import resolve_framings

        try:  # an unknown framing or a bad question file is refused before the model loads
            resolve_framings(cfg.conscience)
        except ConscienceError as exc:
            raise ConscienceError(f"conscience: {exc}") from None
    return cfg


def cmd_serve(args) -> int:
    from .backends import build_backend

    cfg = serve_config(args)
    conscience_cfg = cfg.conscience
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConscienceError("serving needs FastAPI and uvicorn: pip install 'emergent-alignment[serve]'") from None
    from .app import create_app

    backend = build_backend(cfg, conscience_cfg)
    learner = None
    if cfg.learn:
        from .learn import build_learner

        learner = build_learner(cfg, conscience_cfg, backend)
    app = create_app(cfg, backend, learner)
    name = cfg.model_name or ("upstream model" if cfg.upstream else conscience_cfg.model)
    source = redact(cfg.upstream or conscience_cfg.model)
    log(f"serving {name} ({backend.kind}: {source}) on http://{cfg.host}:{cfg.port} action={cfg.action} "
        f"on_error={cfg.on_error} on_unresolved={cfg.on_unresolved} conscience={'on' if cfg.review else 'off'}")
    from .transport import run

    run(app, cfg)
    return 0
