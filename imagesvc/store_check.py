"""``imagesvc store check [--repair]``: the image store against the catalogue, as fsck checks a
filesystem.

It lists what in the store no live task owns (``garbage``; removed with ``--repair``, by the
rules of ``services.sweeper.garbage``, which never touch a live writer's file, so it may run while
the system works), what it keeps and why (``staged``, ``unknown``), images PENDING whose task's
lease has run out (``stalled``), and every OK image whose directory, manifest or file is missing
(``missing``), whose file's size or sha1 is not its stored manifest's ``files[0]`` (``corrupt``),
or whose stored manifest is not the catalogue's (``manifest_differs``). It reads every OK image's
file. One JSON object per line on stdout, a ``summary`` last; exit status 0 when nothing is left
to fix, 4 when something is (as fsck's "errors left uncorrected"), 1 for a mistake (one line on
stderr).

It works on ``IMAGESVC_DATABASE_URL`` and ``IMAGESVC_IMAGE_STORE`` (a directory or an s3:// bucket;
an S3 store's unfinished multipart uploads are its partial files), or the embedded mode's
defaults (``./var/imagesvc.db``, ``./var/images``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from imagesvc.settings import for_existing_database

#: Exit status when findings need attention (fsck's "file system errors left uncorrected").
PROBLEMS_LEFT = 4


def register(commands: argparse._SubParsersAction) -> None:
    store = commands.add_parser("store", help="the image store")
    verbs = store.add_subparsers(dest="store_command", required=True)
    check = verbs.add_parser("check", help="list what no image owns and the images whose files are missing or "
                                           "wrong (JSON lines)")
    check.add_argument("--repair", action="store_true", help="remove what no live task owns")
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from imagesvc.services.sweeper import garbage
    from imagesvc.shared.db.engine import make_engine
    from imagesvc.shared.logging import configure_logging
    from imagesvc.shared.store import LocalStore, StoreUnavailable, open_store

    settings = for_existing_database()
    configure_logging("store-check", fmt=settings.log_format, level=settings.log_level)
    store = open_store(settings.image_store, settings.s3_options())
    if store is None:
        print("imagesvc: no image store is configured (IMAGESVC_IMAGE_STORE=none)", file=sys.stderr)
        return 1
    if isinstance(store, LocalStore) and not os.path.isdir(store.location):
        print(f"imagesvc: the image store {store.location} is not a directory", file=sys.stderr)
        return 1
    if not isinstance(store, LocalStore):
        try:
            store.check()  # a bucket that cannot be read is a mistake, not an empty store
        except StoreUnavailable as exc:
            print(f"imagesvc: {exc}", file=sys.stderr)
            return 1
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        found = garbage.check(engine, store, repair=args.repair, verify=True)
    finally:
        engine.dispose()
    for finding in found.findings:
        print(json.dumps(finding.to_dict()))
    print(json.dumps(found.summary()))
    return PROBLEMS_LEFT if found.problems else 0
