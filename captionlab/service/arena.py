"""The Arena tab's functions: blind matches, votes, and what the votes say.

    match = new_match(settings, "a.png", image_key, voter)  # two captioners at random, their order random
    reveal = cast_vote(settings, match, "left", voter)      # stored; now their names may be shown
    board = standings(settings)                             # leaderboard, win rates, ratings beside CIDEr / CLIP-S

Captions come from the Compare tab's service (`compare.get_pool`: the same loaded captioners, the same
serialised captioning), once per image: later matches on the same image reuse them. A voter never gets
a pair they already judged on that image. The library parts (storage, Bradley-Terry) are in
`captionlab.arena`; nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import random
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from captionlab.arena import ratings as arena_ratings
from captionlab.arena import votes as arena_votes
from captionlab.service import compare, gallery
from captionlab.service.catalog import IN_DOMAIN, strategy_label

AGREEMENT_METRICS = (("CIDEr", "CIDEr"), ("CLIP-S", "CLIP-Score"))  # (label, results-store name)
OUTCOME_LABELS = {"left": "left is better", "right": "right is better", "tie": "tie (equally good)",
                  "both_bad": "both bad"}
CACHED_IMAGES = 256  # images whose captions are kept for later matches; the oldest are dropped beyond this
_captions: dict[tuple, dict[str, str]] = {}
_captions_lock = threading.Lock()


class ArenaError(Exception):
    """A match or vote that cannot be made: the message says why and what to do."""


@dataclass(frozen=True)
class Match:
    """One blind match: an image (`image`: its stable key), two captioners in the order shown, their captions."""

    image: str
    image_path: str
    model: str
    left: str
    right: str
    left_caption: str
    right_caption: str

    def to_state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict | None) -> "Match":
        if not state:
            raise ArenaError("no match yet: pick an image first")
        try:
            return cls(**{k: str(state[k]) for k in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            raise ArenaError("this match is no longer valid: pick an image again") from None


# --- images --------------------------------------------------------------------------------------


def upload_key(path: str | Path) -> str:
    """An uploaded image's key: a hash of its bytes, so the same picture uploaded twice is one image."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ArenaError(f"cannot read the upload: {exc}") from None
    return f"upload:{hashlib.sha256(data).hexdigest()[:20]}"


def gallery_image(settings, index: int) -> tuple[str, str]:
    """(path, key) of the gallery's example `index`."""
    items, _ = gallery.load_gallery(settings.checkpoints)
    if not 0 <= index < len(items):
        raise ArenaError(f"no gallery example {index}")
    return str(items[index].path), f"gallery:{items[index].id}"


def dataset_sample(settings, rng: random.Random | None = None) -> tuple[str, str, str]:
    """(path, key, where from) of a random image of the embedded world's coco test split when the world is
    generated in the workspace, else of the gallery (whose images are drawn from the same splits)."""
    rng = rng or random.Random()
    from captionlab.data.datasets import default_config_path, load_records

    if default_config_path().exists():
        try:
            records = load_records("coco", split="test")
        except Exception:  # noqa: BLE001 - a damaged world falls back to the gallery, said in the note
            records = []
        if records:
            record = rng.choice(records)
            return str(record.image_path), f"coco:{record.image_id}", f"coco test image {record.image_id}"
    items, source = gallery.load_gallery(settings.checkpoints)
    if not items:
        raise ArenaError("no dataset or gallery image to sample from: upload an image instead")
    index = rng.randrange(len(items))
    return str(items[index].path), f"gallery:{items[index].id}", f"gallery example {items[index].id} ({source})"


# --- matches and votes ---------------------------------------------------------------------------


def captions_for(settings, image_path: str, image_key: str) -> tuple[dict[str, str], list[str]]:
    """({strategy key: caption}, problems) for one image, captioned once through the Compare tab's service."""
    cache_key = (settings, image_key)
    with _captions_lock:
        if cache_key in _captions:
            return dict(_captions[cache_key]), []
    try:
        image = compare.open_image(image_path)
    except compare.ImageError as exc:
        raise ArenaError(str(exc)) from None
    done = compare.get_pool(settings).caption_details([image])
    captions = {key: texts[0] for key, texts in done.captions.items() if texts and texts[0].strip()}
    problems = [f"{strategy_label(key)}: {why}" for key, why in done.errors.items()]
    with _captions_lock:
        _captions[cache_key] = dict(captions)
        while len(_captions) > CACHED_IMAGES:
            _captions.pop(next(iter(_captions)))
    return captions, problems


def new_match(settings, image_path: str, image_key: str, voter: str, rng: random.Random | None = None,
              db_path: str | Path | None = None) -> Match:
    """A blind match on this image: two captioners drawn at random among the pairs `voter` has not judged
    on it, shown in random order."""
    rng = rng or random.Random()
    captions, problems = captions_for(settings, image_path, image_key)
    if len(captions) < 2:
        why = "; ".join(problems) or "fewer than two captioners are available (see the Compare tab's list)"
        raise ArenaError(f"the arena needs two captioners that can caption this image: {why}")
    keys = sorted(captions)
    model = settings.model_label
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:]
             if not arena_votes.has_voted(voter, image_key, model, a, b, db_path=db_path)]
    if not pairs:
        raise ArenaError("you have judged every pair of captioners on this image: pick another image")
    left, right = rng.choice(pairs)
    if rng.random() < 0.5:
        left, right = right, left
    return Match(image_key, str(image_path), model, left, right, captions[left], captions[right])


def cast_vote(match: Match, outcome: str, voter: str, db_path: str | Path | None = None) -> str:
    """Store the vote and return the reveal: which captioner wrote which caption (markdown)."""
    if outcome not in arena_votes.OUTCOMES:
        raise ArenaError(f"unknown vote {outcome!r}")
    vote = arena_votes.Vote(voter=voter, image=match.image, model=match.model, left=match.left, right=match.right,
                            outcome=outcome, left_caption=match.left_caption, right_caption=match.right_caption)
    try:
        arena_votes.record_vote(vote, db_path=db_path)
    except arena_votes.VoteError as exc:
        raise ArenaError(str(exc)) from None
    return reveal(match, outcome)


def reveal(match: Match, outcome: str) -> str:
    """The names behind the captions, once the vote is in."""
    return (f"**Your vote: {OUTCOME_LABELS[outcome]}.** Left was **{strategy_label(match.left)}**, right was "
            f"**{strategy_label(match.right)}** ({match.model}).")


# --- standings -----------------------------------------------------------------------------------


@dataclass
class Standings:
    """What the votes say: the leaderboard, the win-rate matrix and the ratings beside automatic metrics."""

    board: list[dict]
    players: list[str]
    rates: list[list[float | None]]
    games: list[list[int]]
    agreement: dict[str, list[dict]]  # metric label -> [{strategy, rating, value}]
    correlation: dict[str, float | None]  # metric label -> Spearman's rho over the strategies with both
    total_votes: int
    method: str


def standings(settings, bootstrap: int = arena_ratings.BOOTSTRAP, db_path: str | Path | None = None) -> Standings:
    """The served model's leaderboard (Bradley-Terry, bootstrap 95% intervals), win rates, and each strategy's
    rating beside its in-domain (COCO) CIDEr and CLIP-S from the Benchmarks results, with Spearman's rho."""
    votes = arena_votes.list_votes(model=settings.model_label, db_path=db_path)
    board = arena_ratings.fit_ratings(votes, bootstrap=bootstrap)
    players, rates, games = arena_ratings.win_rates(votes)
    scores = _in_domain_scores(settings)
    agreement: dict[str, list[dict]] = {}
    correlation: dict[str, float | None] = {}
    for label, metric in AGREEMENT_METRICS:
        points = [{"strategy": strategy_label(r.strategy), "rating": r.rating, "low": r.low, "high": r.high,
                   "value": scores[r.strategy][metric]}
                  for r in board if scores.get(r.strategy, {}).get(metric) is not None]
        agreement[label] = points
        correlation[label] = arena_ratings.spearman([p["rating"] for p in points], [p["value"] for p in points])
    rows = [{"rank": rank, "captioner": strategy_label(r.strategy), "rating": round(r.rating),
             "95% interval": f"{r.low:.0f} to {r.high:.0f}", "votes": r.votes, "wins": r.wins, "losses": r.losses,
             "ties": r.ties, "both bad": r.both_bad} for rank, r in enumerate(board, start=1)]
    return Standings(rows, [strategy_label(p) for p in players], rates, games, agreement, correlation, len(votes),
                     arena_ratings.TIE_METHOD)


def _in_domain_scores(settings) -> dict[str, dict[str, float]]:
    """strategy -> {metric: value} of the served model's whole-split COCO evaluations (the shipped study's
    for the embedded model)."""
    from captionlab.service import benchmarks

    try:
        rows = benchmarks.your_rows(settings.checkpoints)
    except Exception:  # noqa: BLE001 - without results the chart says so; the votes still count
        return {}
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        if row["dataset"] == IN_DOMAIN and not row.get("label") and row["model"] == settings.model_label:
            out[row["strategy"]] = dict(row["metrics"])
    return out


def agreement_note(result: Standings) -> str:
    """One line per metric: does it rank the strategies as the voters do?"""
    lines = []
    for label, _ in AGREEMENT_METRICS:
        rho, points = result.correlation.get(label), result.agreement.get(label, [])
        if rho is None:
            lines.append(f"- {label}: not enough strategies with both a rating and a COCO {label} "
                         f"({len(points)}; Spearman needs 3 that differ)")
        else:
            verdict = "agrees" if rho >= 0.5 else "weakly agrees" if rho > 0 else "disagrees"
            lines.append(f"- {label}: Spearman's rank correlation with the arena ratings ρ = {rho:+.2f} over "
                         f"{len(points)} strategies ({verdict} with people here)")
    return "\n".join(lines)
