"""What every benchmark writes with ``--json PATH``, in the one shape ``bench/all`` reads:
``{"bench", "when", "args", "figures": [{"figure", "imagesvc", "baseline", "ratio", "target",
"met"}], ...}``. Ratios are imagesvc / baseline."""

from __future__ import annotations

import argparse
import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def figure(name: str, imagesvc: Any, baseline: Any = None, ratio: float | None = None, target: str | None = None,
           met: bool | None = None) -> dict[str, Any]:
    """One row of a benchmark's ``figures`` (the shape ``bench/all`` prints): ``imagesvc`` and
    ``baseline`` are numbers or strings (``baseline`` None when there is none), ``target`` None
    and ``met`` None for a figure that is information only."""
    return {"figure": name, "imagesvc": imagesvc, "baseline": baseline, "ratio": ratio, "target": target,
            "met": None if met is None else bool(met)}


def _plain(value: Any) -> Any:
    """JSON without NaN/Infinity (not JSON) and without a password in a URL."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, str):
        return re.sub(r"(://[^:/@\s]+):[^@/\s]+@", r"\1:***@", value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_json(bench: str, args: argparse.Namespace | dict[str, Any], figures: list[dict[str, Any]],
               extra: dict[str, Any] | None = None, *, path: str | os.PathLike | None = None,
               kind: str | None = None) -> Path | None:
    """Write a benchmark's result: ``{"bench", "when", "args", "figures", **extra}`` (``extra``:
    whatever else the benchmark records: rounds, raw measurements, facts of the run). Into
    ``path`` (``--json PATH``) when given, else ``bench/results/<kind>-<timestamp>.json``
    (git-ignored) when ``kind`` is, else nowhere."""
    if path is None and kind is None:
        return None
    document = {"bench": bench, "when": datetime.now().astimezone().isoformat(timespec="seconds"),
                "args": vars(args) if isinstance(args, argparse.Namespace) else dict(args), "figures": figures,
                **(extra or {})}
    if path is None:
        target = HERE / "results" / f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    else:
        target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(_plain(document), indent=2, default=str))
    shown = target.relative_to(ROOT) if target.is_relative_to(ROOT) else target
    print(f"figures written to {shown}", flush=True)
    return target


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from the parent pids in /proc/<pid>/stat)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found
