"""``buildd-client``: the command line (its shape is a public contract, see the README).

    buildd-client [--address ADDR] [--session ID] [-q | -v]
                  [--tls-ca PEM] [--tls-cert PEM --tls-key PEM] [--token-file FILE] COMMAND
      session open | session close [ID] | metadata [SRC] | build [SRC] | status
      | store prune [--older-than DURATION] [--json] | health | shutdown

On a daemon that is not local (or with --upload) metadata and build pack the
source, upload it by digest and download the artifacts (docs/remote.md).

Exit codes: 0 success; 1 the backend or build failed; 2 usage or bad input;
3 no daemon could be reached or started. grpc and the generated code are
imported only by the commands that talk to the daemon, so ``--version`` and
``--help`` stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from buildd import __version__

# Not typing.TYPE_CHECKING: importing typing costs a few ms of every start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from buildd_client._output import Progress
    from buildd_client.client import Client, Session

__all__ = ["build_parser", "main", "parse_config_settings"]

PROG = "buildd-client"
CLIENT_NAME = f"{PROG}/{__version__}"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130


class _Formatter(argparse.HelpFormatter):
    # argparse sizes its formatter, even just to validate add_argument(), with
    # shutil.get_terminal_size; os has the same answer without loading shutil.
    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            try:
                columns = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size().columns
            except (ValueError, OSError):
                columns = 80
            width = max(columns - 2, 20)
        super().__init__(prog, indent_increment, max_help_position, width)


class _Version(argparse.Action):
    # argparse's own "version" action loads its help formatter (shutil,
    # textwrap) just to print one line.
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        sys.stdout.write(f"{PROG} {__version__}\n")
        parser.exit()


def _config_setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> float:
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _SECONDS else "s"
    try:
        number = float(value[:-1] if value[-1:] in _SECONDS else value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration such as 7d, 12h, 30m or 90s"
        ) from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return number * _SECONDS[unit]


def parse_config_settings(pairs: Sequence[tuple[str, str]]) -> dict[str, str | list[str]]:
    """``-C`` pairs to PEP 517 config settings: a key given twice becomes a list."""
    settings: dict[str, str | list[str]] = {}
    for key, value in pairs:
        previous = settings.get(key)
        if previous is None:
            settings[key] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            settings[key] = [previous, value]
    return settings


def _add_build_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", nargs="?", default=".", metavar="SRC", help="the project (default: .)"
    )
    parser.add_argument(
        "-C",
        "--config-setting",
        dest="config_settings",
        action="append",
        type=_config_setting,
        default=[],
        metavar="KEY=VALUE",
        help="a PEP 517 config setting; repeat a key to pass a list",
    )
    parser.add_argument(
        "--python",
        default=argparse.SUPPRESS,
        metavar="PY",
        help="the interpreter to build with: a path or a version such as 3.12",
    )
    parser.add_argument(
        "--upload",
        action="store_true",
        default=os.environ.get("BUILDD_UPLOAD", "").lower() in ("1", "true", "yes", "on"),
        help="send the source to the daemon instead of its path (automatic for a "
        "non-local address; $BUILDD_UPLOAD=1)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build Python projects with a buildd daemon's warm environments.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    parser.add_argument(
        "--address",
        metavar="ADDR",
        help="the daemon (default: $BUILDD_ADDRESS, else the per-user socket, auto-started)",
    )
    parser.add_argument(
        "--tls-ca", metavar="PEM", help="use TLS, trusting this CA (default: $BUILDD_TLS_CA)"
    )
    parser.add_argument(
        "--tls-cert", metavar="PEM", help="mutual TLS: this client's certificate ($BUILDD_TLS_CERT)"
    )
    parser.add_argument("--tls-key", metavar="PEM", help="its private key ($BUILDD_TLS_KEY)")
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="send the token in FILE (default: $BUILDD_TOKEN_FILE, else $BUILDD_TOKEN)",
    )
    parser.add_argument(
        "--session",
        metavar="ID",
        help="the session (default: $BUILDD_SESSION, else the per-user default session)",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="hide progress and backend output"
    )
    verbosity.add_argument(
        "-v", "--verbose", action="store_true", help="show progress even when stderr is no TTY"
    )
    parser.add_argument(
        "--python",
        metavar="PY",
        help="the interpreter for metadata and build (default: this one)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    session = commands.add_parser(
        "session", help="open or close a session", formatter_class=_Formatter
    )
    session_commands = session.add_subparsers(dest="session_command", metavar="ACTION")
    session_commands.required = True
    session_commands.add_parser(
        "open", help="print a new session id on stdout, nothing else", formatter_class=_Formatter
    ).set_defaults(handler=_session_open)
    close = session_commands.add_parser(
        "close",
        help="end a session; its environments stay in the store (--no-store: deleted)",
        formatter_class=_Formatter,
    )
    close.add_argument("id", nargs="?", metavar="ID")
    close.set_defaults(handler=_session_close)

    metadata = commands.add_parser(
        "metadata",
        help="print the core metadata (the METADATA file); --json: a JSON object of it",
        formatter_class=_Formatter,
    )
    _add_build_options(metadata)
    metadata.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object, exactly as `python -m build --metadata` does",
    )
    metadata.add_argument(
        "--watch",
        action="store_true",
        help="keep watching SRC: print the metadata again each time it changes (Ctrl-C ends); "
        "with --json one JSON object per line",
    )
    metadata.set_defaults(handler=_metadata)

    build = commands.add_parser(
        "build",
        help="print each artifact's absolute path on its own line of stdout",
        formatter_class=_Formatter,
    )
    _add_build_options(build)
    build.add_argument("--sdist", action="store_true", help="build an sdist from the tree")
    build.add_argument("--wheel", action="store_true", help="build a wheel from the tree")
    build.add_argument("--editable", action="store_true", help="build an editable wheel (PEP 660)")
    build.add_argument(
        "-o", "--outdir", metavar="OUTDIR", help="where artifacts go (default: SRC/dist)"
    )
    build.set_defaults(handler=_build)

    status = commands.add_parser(
        "status", help="the daemon, its sessions and their environments", formatter_class=_Formatter
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=_status)

    store = commands.add_parser(
        "store", help="your environments kept across sessions", formatter_class=_Formatter
    )
    store_commands = store.add_subparsers(dest="store_command", metavar="ACTION")
    store_commands.required = True
    prune = store_commands.add_parser(
        "prune",
        help="delete idle environments of your store (leased ones are never touched)",
        formatter_class=_Formatter,
    )
    prune.add_argument(
        "--older-than",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="only those unused for this long, e.g. 7d, 12h, 30m (default: every idle one)",
    )
    prune.add_argument("--json", action="store_true", help="print one JSON object")
    prune.set_defaults(handler=_store_prune)

    health = commands.add_parser(
        "health", help="exit 0 only when the daemon is serving", formatter_class=_Formatter
    )
    health.set_defaults(handler=_health)

    shutdown = commands.add_parser(
        "shutdown",
        help="drain the daemon (running calls may finish), then stop it",
        formatter_class=_Formatter,
    )
    shutdown.add_argument(
        "--grace",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="time running calls get to finish (default: the daemon's --grace)",
    )
    shutdown.add_argument("--no-wait", action="store_true", help="return once the drain has begun")
    shutdown.set_defaults(handler=_shutdown)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return _run(args, parser)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from buildd_client import _output
    from buildd_client.addresses import parse_address
    from buildd_client.client import resolve_address
    from buildd_client.errors import DaemonUnavailable, RequestFailed

    try:
        args.address = parse_address(resolve_address(args.address)).target
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except RequestFailed as exc:
        _output.report_failure(exc, sys.stderr)
        return exc.exit_code
    except DaemonUnavailable as exc:
        _output.report_unavailable(exc, sys.stderr)
        return EXIT_UNAVAILABLE
    except _UsageError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except ValueError as exc:  # credentials or a source that cannot be packed
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_USAGE
    except OSError as exc:  # the client's own files: state folder, output
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_FAILED


class _UsageError(Exception):
    """Bad input found after parsing (exit code 2)."""


def _client(args: argparse.Namespace, *, autostart: bool) -> Client:
    from buildd_client.client import Client
    from buildd_client.credentials import Credentials

    credentials = Credentials.from_options(
        tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key, token_file=args.token_file
    )
    return Client(args.address, autostart=autostart, credentials=credentials)


def _session(client: Client, args: argparse.Namespace) -> Session:
    session_id = args.session or os.environ.get("BUILDD_SESSION")
    if session_id:
        return client.join_session(session_id)
    return client.default_session(CLIENT_NAME)


def _progress(args: argparse.Namespace) -> Progress:
    from buildd_client._output import Progress

    phases = not args.quiet and (args.verbose or sys.stderr.isatty())
    return Progress(sys.stderr, phases=phases, logs=not args.quiet)


def _session_open(args: argparse.Namespace) -> int:
    with _client(args, autostart=True) as client:
        session = client.open_session(CLIENT_NAME)
    sys.stdout.write(session.id + "\n")
    return EXIT_OK


def _session_close(args: argparse.Namespace) -> int:
    # No auto-start: a daemon started now would have no session to close.
    with _client(args, autostart=False) as client:
        session_id = (
            args.id
            or args.session
            or os.environ.get("BUILDD_SESSION")
            or client.default_session_id()
        )
        if not session_id:
            raise _UsageError("no session to close: give its ID, --session or BUILDD_SESSION")
        response = client.close_session(session_id)
    if not args.quiet:
        sys.stderr.write(
            f"closed session {session_id}: {response.environments_stored} environments "
            f"kept in the store, {response.environments_deleted} deleted, "
            f"{response.environments_pending} still running a hook\n"
        )
    return EXIT_OK


def _python(args: argparse.Namespace) -> str | None:
    return args.python if args.python else None


def _metadata(args: argparse.Namespace) -> int:
    if args.watch:
        from buildd_client._watching import watch_metadata

        return watch_metadata(args, _client(args, autostart=True), _session, _python(args))
    from buildd_client._uploads import packed_source, run_call
    from buildd_client.metadata_json import metadata_json

    with _client(args, autostart=True) as client, contextlib.ExitStack() as stack:
        session = _session(client, args)
        packed = packed_source(args, session, stack)
        result = run_call(
            args,
            session,
            packed,
            _progress(args),
            lambda source: session.metadata(
                source,
                config_settings=parse_config_settings(args.config_settings),
                python=_python(args),
                quiet=args.quiet,
            ),
        )
    if args.json:
        sys.stdout.write(metadata_json(result.metadata) + "\n")
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(result.metadata)
        sys.stdout.buffer.flush()
    return EXIT_OK


def _build(args: argparse.Namespace) -> int:
    chosen = [name for name in ("sdist", "wheel", "editable") if getattr(args, name)]
    # Like python -m build: no flag means an sdist, then a wheel built from it;
    # explicit flags build exactly those, each from the tree.
    distributions = chosen or ["sdist", "wheel"]
    source = os.path.abspath(args.source)
    if args.outdir:
        outdir: str | None = os.path.abspath(args.outdir)
    elif os.path.isdir(source):
        outdir = os.path.join(source, "dist")
    else:
        outdir = None  # an sdist, or a path only the daemon sees: its default
    from buildd_client._uploads import packed_source, run_call

    with _client(args, autostart=True) as client, contextlib.ExitStack() as stack:
        session = _session(client, args)
        packed = packed_source(args, session, stack)
        result = run_call(
            args,
            session,
            packed,
            _progress(args),
            lambda source: session.build(
                source,
                distributions=distributions,
                wheel_from_sdist=not chosen,
                # Uploaded: the daemon keeps them in the session; we download.
                output_directory=None if packed else outdir,
                config_settings=parse_config_settings(args.config_settings),
                python=_python(args),
                quiet=args.quiet,
            ),
        )
        if packed is None:
            paths = [artifact.path for artifact in result.artifacts]
        else:
            local = outdir or os.path.dirname(source)  # an sdist: next to it
            paths = [str(p) for p in session.download(result.artifacts, local)]
    for path in paths:
        sys.stdout.write(path + "\n")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    import json

    from buildd_client import _output

    # No auto-start: "no daemon" is the answer, not a reason to start one.
    with _client(args, autostart=False) as client:
        status = client.status(args.session or "")
    if args.json:
        sys.stdout.write(json.dumps(_output.status_to_json(status), indent=2) + "\n")
    else:
        sys.stdout.write(_output.status_text(status))
    return EXIT_OK


def _store_prune(args: argparse.Namespace) -> int:
    import json

    from buildd_client import _output

    # No auto-start: a daemon started now would have nothing to prune.
    with _client(args, autostart=False) as client:
        response = client.prune_store(args.older_than)
    if args.json:
        sys.stdout.write(json.dumps(_output.prune_to_json(response), indent=2) + "\n")
    else:
        sys.stdout.write(
            f"removed {response.environments_removed} environments "
            f"({_output.size_text(response.bytes_freed)}), "
            f"{response.environments_kept} kept\n"
        )
    return EXIT_OK


def _health(args: argparse.Namespace) -> int:
    with _client(args, autostart=False) as client:
        serving = client.health()
    if not args.quiet:
        sys.stderr.write(f"{PROG}: {'serving' if serving else 'not serving'}\n")
    return EXIT_OK if serving else EXIT_FAILED


def _shutdown(args: argparse.Namespace) -> int:
    import time

    from buildd_client.errors import DaemonUnavailable

    if args.grace < 0:
        raise _UsageError(f"--grace {args.grace} is negative")
    with _client(args, autostart=False) as client:
        answer = client.shutdown(args.grace)
        if not args.quiet:
            sys.stderr.write(f"{PROG}: draining, {answer.active_calls} call(s) running\n")
        if args.no_wait:
            return EXIT_OK
        # The daemon answers NOT_SERVING while it drains, then stops
        # answering; a Unix socket is removed only after the environments
        # were deleted, so wait for that too: "stopped" means cleaned up.
        socket_path = client.address.path if client.address.kind == "unix" else ""
        while True:
            try:
                client.health()
            except DaemonUnavailable:
                if not socket_path or not os.path.exists(socket_path):
                    return EXIT_OK
            time.sleep(0.1)


if __name__ == "__main__":
    raise SystemExit(main())
