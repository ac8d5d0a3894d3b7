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
import os
import sys

from buildd import __version__
from buildd_client import _commands
from buildd_client._commands import (
    CLIENT_NAME,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    PROG,
    parse_config_settings,
)

# Not typing.TYPE_CHECKING: importing typing costs a few ms of every start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


__all__ = [
    "CLIENT_NAME",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "PROG",
    "build_parser",
    "main",
    "parse_config_settings",
]


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
    ).set_defaults(handler=_commands.session_open)
    close = session_commands.add_parser(
        "close",
        help="end a session; its environments stay in the store (--no-store: deleted)",
        formatter_class=_Formatter,
    )
    close.add_argument("id", nargs="?", metavar="ID")
    close.set_defaults(handler=_commands.session_close)

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
    metadata.set_defaults(handler=_commands.metadata)

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
    build.set_defaults(handler=_commands.build)

    status = commands.add_parser(
        "status", help="the daemon, its sessions and their environments", formatter_class=_Formatter
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(handler=_commands.status)

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
    prune.set_defaults(handler=_commands.store_prune)

    health = commands.add_parser(
        "health", help="exit 0 only when the daemon is serving", formatter_class=_Formatter
    )
    health.set_defaults(handler=_commands.health)

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
    shutdown.set_defaults(handler=_commands.shutdown)
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
    except _commands.UsageError as exc:
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


if __name__ == "__main__":
    raise SystemExit(main())
