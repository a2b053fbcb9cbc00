"""``imagesvc config show|record``: the settings a process would run with here, where each came
from, and the deployment's recorded settings (``shared.deployment``) beside this environment's.

``show`` prints, for every setting, its variable, value (passwords masked) and source
(environment, serve's default or default), then the deployment's record with a verdict per
setting: ``agrees``, ``differs`` (a process started here would refuse) or ``not recorded``.
It changes nothing. ``record --yes`` replaces the record with this environment's values, for a
deliberate change (the store moved, the topology prefix changed).

Both take ``--serve`` for the settings ``imagesvc serve`` uses (the embedded broker, database and
store under ``IMAGESVC_DATA_DIR``), else those of ``gateway``, ``worker`` and ``node-agent``.
"""

from __future__ import annotations

import argparse
import os
import sys

from imagesvc.settings import missing_sqlite_file
from imagesvc.shared.config import ConfigError, Settings, effective, sources


def register(commands: argparse._SubParsersAction) -> None:
    config = commands.add_parser("config", help="the effective settings and the deployment's recorded ones")
    verbs = config.add_subparsers(dest="config_command", required=True)
    show = verbs.add_parser("show", help="every setting, its value and where it came from; the deployment's "
                                         "record beside this environment's values")
    show.add_argument("--serve", action="store_true", help="as `imagesvc serve` would run (embedded defaults)")
    show.set_defaults(func=_show)
    record = verbs.add_parser("record", help="record this environment's values as the deployment's (after a "
                                             "deliberate change)")
    record.add_argument("--serve", action="store_true", help="as `imagesvc serve` would run (embedded defaults)")
    record.add_argument("--yes", action="store_true", help="required: every process must then agree with them")
    record.set_defaults(func=_record)


def _settings(serve: bool) -> Settings:
    if serve:
        from imagesvc.settings import for_existing_database

        try:
            return for_existing_database()
        except ConfigError:
            return Settings.from_env(os.environ, embedded=True)  # show works without a database
    return Settings.from_env(os.environ)


def _show(args: argparse.Namespace) -> int:
    settings = _settings(args.serve)
    where = sources(settings, os.environ, embedded=args.serve)
    values = effective(settings)
    width = max(map(len, values))
    print(f"settings ({'imagesvc serve' if args.serve else 'gateway, workers, node agents'}):")
    for var, value in values.items():
        print(f"  {var:<{width}} = {value}   [{where[var]}]")
    print()
    print("deployment record (every process checks itself against it as it starts):")
    for line in _record_lines(settings, serve=args.serve):
        print("  " + line)
    return 0


def _record_lines(settings: Settings, *, serve: bool) -> list[str]:
    from sqlalchemy.exc import DBAPIError

    from imagesvc.shared import deployment
    from imagesvc.shared.db.engine import make_engine

    if missing_sqlite_file(settings) is not None:
        return ["no database yet (the first process to start records its values)"]
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        try:
            recorded = deployment.recorded(engine)
        except DBAPIError as exc:
            return [f"cannot read it: {type(getattr(exc, 'orig', exc)).__name__} (is the database reachable "
                    "and migrated? `imagesvc db upgrade`)"]
    finally:
        engine.dispose()
    try:
        mine = {fact.name: fact for fact in deployment.facts(
            settings, uses_store=True, server_url_configured=not serve or "IMAGESVC_IMAGE_SERVER_URL" in os.environ)}
    except ConfigError as exc:
        return [f"cannot compare: {exc}"]
    lines = []
    for name in sorted(set(recorded) | set(mine)):
        there, here = recorded.get(name), mine.get(name)
        if there is None:
            lines.append(f"{name}: not recorded (here: {here.shown})")
            continue
        verdict = ("agrees" if here is not None and here.value == there.value
                   else "differs: here " + here.shown if here is not None else "not used here")
        lines.append(f"{name} = {there.value!r}, recorded by {there.recorded_by} on "
                     f"{there.recorded_at:%Y-%m-%d %H:%M} UTC: {verdict}")
    return lines or ["empty (the first process to start records its values)"]


def _record(args: argparse.Namespace) -> int:
    from imagesvc.shared import deployment
    from imagesvc.shared.db.engine import make_engine

    if not args.yes:
        print("imagesvc config record: every process of the deployment must then agree with these values; "
              "add --yes to record them", file=sys.stderr)
        return 1
    if args.serve:
        from imagesvc.settings import for_existing_database

        settings = for_existing_database()
    else:
        settings = Settings.from_env(os.environ)
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        facts = deployment.record(engine, settings, process="config-record")
    finally:
        engine.dispose()
    for fact in facts:
        print(f"recorded {fact.name}: {fact.shown}")
    return 0
