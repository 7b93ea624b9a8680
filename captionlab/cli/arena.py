"""`python -m captionlab arena`: the blind arena's ratings and votes, from the results database.

    python -m captionlab arena ratings            # leaderboard: Bradley-Terry rating, 95% interval, votes
    python -m captionlab arena ratings --json     # [{"model", "strategy", "rating", "low", "high", "votes", ...}]
    python -m captionlab arena export --csv       # every vote as CSV on stdout (or --out FILE)

Votes are cast in the app's Arena tab; how ties and "both bad" count is in `captionlab.arena.ratings`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from captionlab.cli import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("arena", help="the blind arena's ratings and votes",
                                   description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="\n".join(__doc__.splitlines()[2:]))
    actions = parser.add_subparsers(dest="arena_command", required=True)
    ratings = actions.add_parser("ratings", help="Bradley-Terry ratings with bootstrap 95%% intervals")
    ratings.add_argument("--json", action="store_true", help="print JSON")
    ratings.add_argument("--model", help="only this model's captioners")
    ratings.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default 500)")
    ratings.add_argument("--db", type=Path, help="results database (default: the workspace's)")
    ratings.set_defaults(func=run_ratings)
    export = actions.add_parser("export", help="every vote")
    export.add_argument("--csv", action="store_true", help="as CSV (the only format, and the default)")
    export.add_argument("--out", type=Path, help="write to this file instead of stdout")
    export.add_argument("--db", type=Path, help="results database (default: the workspace's)")
    export.set_defaults(func=run_export)


def run_ratings(args: argparse.Namespace) -> int:
    from captionlab.arena.ratings import BOOTSTRAP, TIE_METHOD, fit_ratings
    from captionlab.arena.votes import list_votes

    bootstrap = BOOTSTRAP if args.bootstrap is None else args.bootstrap
    if bootstrap < 0:
        raise UserError(f"--bootstrap must be 0 or more, got {bootstrap}")
    board = fit_ratings(list_votes(model=args.model, db_path=args.db), bootstrap=bootstrap)
    if args.json:
        print(json.dumps([r.to_json() for r in board], indent=2))
        return 0
    if not board:
        print("no arena votes yet: cast some in the app's Arena tab (python app.py)")
        return 0
    print(f"{'model':<16}{'strategy':<18}{'rating':>8}{'95% interval':>18}{'votes':>7}")
    for r in board:
        print(f"{r.model[:15]:<16}{r.strategy[:17]:<18}{r.rating:>8.0f}{f'{r.low:.0f} to {r.high:.0f}':>18}"
              f"{r.votes:>7}")
    print(f"method: {TIE_METHOD}; intervals from {bootstrap} bootstrap resamples of the votes")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from captionlab.arena.votes import export_csv

    if args.out is None:
        export_csv(sys.stdout, db_path=args.db)
        return 0
    try:
        with open(args.out, "w", encoding="utf-8", newline="") as stream:
            count = export_csv(stream, db_path=args.db)
    except OSError as exc:
        raise UserError(f"cannot write {args.out}: {exc}") from None
    print(f"{count} vote(s) written to {args.out}", file=sys.stderr)
    return 0
