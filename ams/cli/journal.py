"""The ``ams-store`` commands of the journal: changes (the change feed), publish (the
RabbitMQ relay) and alias (deployment aliases)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Callable, Dict

from ..keys import ACTIONS
from ..store import AMSDataStore
from . import (
    AMQP_ENV,
    ENTRY_TYPES,
    NAME_ENV,
    PROG,
    UsageError,
    _add_domain,
    _add_entry,
    _global_options,
    _version_selector,
    command,
    emit,
)


# ------------------------------------------------------------------ changes
def _changes_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--after", type=int, default=0, metavar="ID",
                        help="only events with a larger id (default 0: from the first)")
    parser.add_argument("--limit", type=int, default=1000, metavar="N",
                        help="events per read (default 1000)")
    _add_domain(parser, required=False)
    _add_entry(parser, required=False)
    parser.add_argument("--action", choices=ACTIONS, help="only events of this action")
    parser.add_argument("--follow", action="store_true",
                        help="keep polling for new events until interrupted (Ctrl-C: exit 0)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="with --follow: seconds between polls (default 1)")


@command("changes", "Print the store's committed changes as JSON lines, in commit order.",
         example=f"{PROG} changes --after 120 --domain EOS --follow",
         arguments=_changes_arguments, read_only=True)
def changes(store: AMSDataStore, args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError("--interval must be positive")
    after = args.after
    try:
        while True:
            events = store.changes(after=after, limit=args.limit, domain_name=args.domain_name,
                                   entry_type=args.entry_type, action=args.action)
            for event in events:
                sys.stdout.write(json.dumps(event, sort_keys=True, ensure_ascii=False) + "\n")
                after = event["id"]
            sys.stdout.flush()
            if len(events) == args.limit:
                continue  # more are waiting
            if not args.follow:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0


# ------------------------------------------------------------------ publish
def _publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--amqp", default=os.environ.get(AMQP_ENV), metavar="URL",
                        help=f"the broker, e.g. amqp://guest:guest@127.0.0.1:5672/%%2F "
                             f"(or {AMQP_ENV})")
    parser.add_argument("--exchange", default="ams.store",
                        help="durable topic exchange to publish to (default ams.store)")
    parser.add_argument("--relay", default="default",
                        help="relay name: its cursor is kept in the store (default 'default')")
    parser.add_argument("--once", action="store_true",
                        help="publish what is pending, then exit")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="seconds between polls when not --once (default 1)")


def _check_publish(args: argparse.Namespace) -> None:
    if not args.amqp:
        raise UsageError(f"no broker: give --amqp or set {AMQP_ENV}")


@command("publish", "Relay the store's changes to RabbitMQ (persistent JSON messages, "
                    "publisher confirms; resumes where it stopped).",
         example=f"{PROG} publish --amqp amqp://guest:guest@127.0.0.1:5672/%2F --once",
         arguments=_publish_arguments, check=_check_publish)
def publish(store: AMSDataStore, args: argparse.Namespace) -> int:
    from ..events import publish as relay
    logging.getLogger("pika").setLevel(logging.DEBUG if args.verbose > 1 else logging.CRITICAL)
    try:
        sent = relay(store, args.amqp, exchange=args.exchange, relay=args.relay,
                     once=args.once, interval=args.interval)
    except KeyboardInterrupt:
        return 0
    emit({"published": sent, "relay": args.relay, "exchange": args.exchange,
          "cursor": store.relay_cursor(args.relay)})
    return 0


# ------------------------------------------------------------------ alias
@dataclasses.dataclass(frozen=True)
class _AliasAction:
    """One ``alias`` subcommand: help, example, extra options, whether it writes, what it does."""

    help: str
    example: str
    arguments: Callable[[argparse.ArgumentParser], None]
    writes: bool
    run: Callable[[AMSDataStore, argparse.Namespace], Any]


def _alias_key(parser: argparse.ArgumentParser) -> None:
    _add_domain(parser)
    parser.add_argument("--entry", dest="entry_type", choices=ENTRY_TYPES, default="models",
                        help="entry type the alias belongs to (default: models)")


def _alias_name(parser: argparse.ArgumentParser) -> None:
    _alias_key(parser)
    parser.add_argument("--name", "--alias", dest="alias", required=True, metavar="ALIAS",
                        help="alias name: 1-64 letters, digits, _ - ., starting with a letter "
                             "('latest' is reserved); here --name is the alias: give the "
                             f"application name before 'alias' or in {NAME_ENV}")


def _alias_set_arguments(parser: argparse.ArgumentParser) -> None:
    _alias_name(parser)
    parser.add_argument("--version", type=_version_selector, required=True, metavar="V|@alias",
                        help="the existing version to point at (or '@other': the version "
                             "the alias other points at)")


def _alias_get_arguments(parser: argparse.ArgumentParser) -> None:
    _alias_name(parser)
    parser.add_argument("--at", metavar="ISO",
                        help="the version the alias pointed at then: an ISO-8601 time such as "
                             "2024-05-01T14:00:00 (naive times are UTC)")


def _alias_result(args: argparse.Namespace, **values: Any) -> Dict[str, Any]:
    return {"domain_name": args.domain_name, "entry_type": args.entry_type, "alias": args.alias,
            **values}


ALIAS_ACTIONS: Dict[str, _AliasAction] = {
    "set": _AliasAction(
        "Point an alias at an existing version; prints the version it pointed at before.",
        f"{PROG} alias set --domain EOS --name champion --version 3",
        _alias_set_arguments, True,
        lambda store, args: _alias_result(
            args, version=args.version,
            previous=store.set_alias(args.domain_name, args.alias, args.version,
                                     entry_type=args.entry_type))),
    "get": _AliasAction(
        "Print the version an alias points at (null when unset), or pointed at --at a time.",
        f"{PROG} alias get --domain EOS --name champion --at 2024-05-01T14:00:00",
        _alias_get_arguments, False,
        lambda store, args: _alias_result(
            args, at=args.at, version=store.get_alias(args.domain_name, args.alias,
                                                      entry_type=args.entry_type, at=args.at))),
    "history": _AliasAction(
        "List every change of an alias, oldest first (version, previous, set_at, set_by).",
        f"{PROG} alias history --domain EOS --name champion",
        _alias_name, False,
        lambda store, args: store.alias_history(args.domain_name, args.alias,
                                                entry_type=args.entry_type)),
    "rm": _AliasAction(
        "Unset an alias (kept in its history); prints the version it pointed at.",
        f"{PROG} alias rm --domain EOS --name challenger",
        _alias_name, True,
        lambda store, args: _alias_result(
            args, removed=store.remove_alias(args.domain_name, args.alias,
                                             entry_type=args.entry_type))),
    "list": _AliasAction(
        "Map the aliases set on an entry of a domain to their versions.",
        f"{PROG} alias list --domain EOS",
        _alias_key, False,
        lambda store, args: store.aliases(args.domain_name, entry_type=args.entry_type)),
}
"""The ``alias`` subcommands, in the order ``ams-store alias --help`` lists them."""


def _alias_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="alias_action", metavar="action", required=True,
                                    help="one of: " + ", ".join(ALIAS_ACTIONS))
    for name, action in ALIAS_ACTIONS.items():
        sub = actions.add_parser(name, help=action.help, description=action.help,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=f"example:\n  {action.example}")
        action.arguments(sub)
        _global_options(sub, suppress=True, app_name=False)
        sub.set_defaults(_subparser=sub)


@command("alias", "Deployment aliases (champion, challenger...): set, get (also at a past "
                  "time), history, rm, list.",
         example="\n".join(action.example for action in ALIAS_ACTIONS.values()),
         arguments=_alias_arguments,
         read_only=lambda args: not ALIAS_ACTIONS[args.alias_action].writes)
def alias(store: AMSDataStore, args: argparse.Namespace) -> int:
    emit(ALIAS_ACTIONS[args.alias_action].run(store, args))
    return 0


