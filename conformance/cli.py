"""`vllm-conformance`: the command-line front of the suite."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from conformance import __version__
from conformance.overlay import Overlay, fixture_names
from conformance.probe import ENGINES, run_probe

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_DISCOVER = """
import vllm.plugins as plugins
from vllm.platforms import resolve_current_platform_cls_qualname
groups = plugins.discovered_groups() if hasattr(plugins, "discovered_groups") else {}
if not groups:
    from importlib.metadata import entry_points
    groups = {g: list(entry_points(group=g)) for g in {
        plugins.DEFAULT_PLUGINS_GROUP, plugins.PLATFORM_PLUGINS_GROUP,
        plugins.IO_PROCESSOR_PLUGINS_GROUP, plugins.STAT_LOGGER_PLUGINS_GROUP}}
loaded = {}
for group in sorted(groups):
    loaded[group] = sorted(plugins.load_plugins_by_group(group))
probe.result["entry_points"] = sorted(
    [g, ep.name, ep.value] for g, eps in groups.items() for ep in eps)
probe.result["loaded"] = loaded
probe.result["platform"] = resolve_current_platform_cls_qualname()
"""


def _demo(args: argparse.Namespace) -> int:
    names = fixture_names()
    with Overlay() as overlay:
        for name in names:
            overlay.add_fixture(name)
        result = run_probe(_DISCOVER, engine=args.engine, overlay=overlay)
    if not result.ok:
        print(f"The discovery probe failed: {result.describe()}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(result.values, indent=2))
        return EXIT_OK
    print(f"vllm-conformance {__version__} · engine: {args.engine} · fixtures: {', '.join(names)}")
    rows = [("group", "name", "value", "loaded")]
    for group, name, value in result.values["entry_points"]:
        loaded = name in result.values["loaded"].get(group, ())
        rows.append((group, name, value, "yes" if loaded else "NO"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    print(f"resolved platform: {result.values['platform']}")
    print(f"(probe: {result.wall_s:.2f} s)")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-conformance", description="Certify vLLM plugins and engines."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the plugin loader over the bundled fixture plugins and show what it found",
    )
    demo.add_argument("--engine", choices=ENGINES, default="reference")
    demo.add_argument("--json", action="store_true", help="print the observations as JSON")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
