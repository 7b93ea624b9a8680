"""The arena's library and CLI: votes stored once per voter, image and pair; Bradley-Terry recovers a known
order of synthetic preferences with intervals around it; Spearman; `arena ratings --json`, `arena export --csv`."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from captionlab.arena.ratings import fit_bradley_terry, fit_ratings, spearman, win_rates
from captionlab.arena.votes import DuplicateVote, Vote, VoteError, export_csv, has_voted, list_votes, record_vote
from captionlab.cli import main

TRUE_STRENGTH = {"full": 1.5, "lora": 0.8, "dora": 0.5, "prompt_learning": 0.0, "zero_shot": -1.2}


def synthetic_votes(n: int, seed: int = 0, tie_rate: float = 0.1) -> list[Vote]:
    """Votes drawn from Bradley-Terry with TRUE_STRENGTH, random pairs and sides, some ties and both-bads."""
    rng = np.random.default_rng(seed)
    names = list(TRUE_STRENGTH)
    votes = []
    for k in range(n):
        left, right = rng.choice(names, 2, replace=False)
        chance_left = 1.0 / (1.0 + np.exp(TRUE_STRENGTH[right] - TRUE_STRENGTH[left]))
        draw = rng.random()
        if draw < tie_rate:
            outcome = "tie" if draw < tie_rate / 2 else "both_bad"
        else:
            outcome = "left" if rng.random() < chance_left else "right"
        votes.append(Vote(f"voter-{k % 17}", f"image-{k}", "embedded", str(left), str(right), outcome))
    return votes


def test_bradley_terry_recovers_the_order_of_known_preferences():
    board = fit_ratings(synthetic_votes(600), bootstrap=200)
    assert [r.strategy for r in board] == sorted(TRUE_STRENGTH, key=TRUE_STRENGTH.get, reverse=True)
    for rating in board:
        assert rating.low <= rating.rating <= rating.high and rating.high - rating.low < 200
    best, worst = board[0], board[-1]
    assert best.low > worst.high  # the extremes are told apart with confidence
    # the fitted gaps are the true ones on the Elo scale (400 / ln 10 per unit of log-strength), within noise
    fitted_gap = (best.rating - worst.rating) / (400 / np.log(10))
    assert fitted_gap == pytest.approx(TRUE_STRENGTH["full"] - TRUE_STRENGTH["zero_shot"], rel=0.25)
    assert sum(r.votes for r in board) == 2 * 600


def test_ties_count_half_and_an_unbeaten_captioner_stays_finite():
    wins = np.array([[0.0, 3.0], [0.0, 0.0]])  # a always beat b
    theta = fit_bradley_terry(wins)
    assert np.isfinite(theta).all() and theta[0] > theta[1]
    tied = fit_bradley_terry(np.array([[0.0, 2.0], [2.0, 0.0]]))
    assert tied == pytest.approx([0.0, 0.0], abs=1e-9)
    votes = [Vote("v", "i1", "m", "a", "b", "tie"), Vote("v", "i2", "m", "a", "b", "left")]
    players, rates, games = win_rates(votes)
    assert players == ["a", "b"] and rates[0][1] == pytest.approx(0.75) and rates[1][0] == pytest.approx(0.25)
    assert rates[0][0] is None and games[0][1] == 2


def test_spearman_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 1, 1]) is None and spearman([1, 2], [1, 2]) is None
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1])


def test_one_vote_per_voter_image_and_pair_whatever_the_order(tmp_path):
    db = tmp_path / "arena.db"
    first = Vote("browser-1", "gallery:coco-00", "embedded", "lora", "full", "left", "a red cup", "a cup")
    assert record_vote(first, db_path=db) == 1
    with pytest.raises(DuplicateVote, match="already voted"):
        record_vote(Vote("browser-1", "gallery:coco-00", "embedded", "full", "lora", "right"), db_path=db)
    assert has_voted("browser-1", "gallery:coco-00", "embedded", "full", "lora", db_path=db)
    record_vote(Vote("browser-2", "gallery:coco-00", "embedded", "full", "lora", "tie"), db_path=db)  # another voter
    record_vote(Vote("browser-1", "gallery:coco-01", "embedded", "full", "lora", "both_bad"), db_path=db)
    with pytest.raises(VoteError, match="unknown outcome"):
        record_vote(Vote("browser-1", "gallery:coco-02", "embedded", "full", "lora", "maybe"), db_path=db)
    with pytest.raises(VoteError, match="two different"):
        record_vote(Vote("browser-1", "gallery:coco-02", "embedded", "lora", "lora", "left"), db_path=db)
    votes = list_votes(db_path=db)
    assert [(v.voter, v.left, v.right, v.outcome) for v in votes] == [
        ("browser-1", "lora", "full", "left"), ("browser-2", "full", "lora", "tie"),
        ("browser-1", "full", "lora", "both_bad")]
    assert votes[0].left_caption == "a red cup" and votes[0].created_at


def test_cli_prints_ratings_as_json_and_exports_votes_as_csv(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    for vote in synthetic_votes(60, seed=3):
        record_vote(vote)
    assert main(["arena", "ratings", "--json", "--bootstrap", "50"]) == 0
    ratings = json.loads(capsys.readouterr().out)
    assert {"strategy", "rating", "low", "high", "votes"} <= set(ratings[0])
    assert sum(r["votes"] for r in ratings) == 120 and ratings[0]["rating"] >= ratings[-1]["rating"]
    assert main(["arena", "export", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 60 and {"voter", "image", "left", "right", "outcome", "created_at"} <= set(rows[0])
    out = io.StringIO()
    assert export_csv(out, votes=[]) == 0 and out.getvalue().startswith("voter,")


class _FakePool:
    """The Compare service's pool, captioning with fixed texts and counting its calls."""

    def __init__(self, captions: dict[str, str]):
        self.captions, self.calls = captions, 0

    def caption_details(self, images):
        from captionlab.service.compare import Captioned

        self.calls += 1
        return Captioned(captions={k: [v] for k, v in self.captions.items()}, errors={"dora": "failed to load"})


def test_matches_never_repeat_a_judged_pair_and_votes_reveal_the_names(tmp_path, monkeypatch):
    import random

    from PIL import Image

    from captionlab.service import arena, compare
    from captionlab.service.settings import AppSettings
    from captionlab.ui.arena_tab import voter_of

    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    pool = _FakePool({"zero_shot": "a long verbose caption", "lora": "a red cup", "full": "a cup on a table"})
    monkeypatch.setattr(compare, "get_pool", lambda settings: pool)
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (200, 20, 20)).save(image)
    settings = AppSettings(model="tiny-test", checkpoints=None)
    key = arena.upload_key(image)
    seen = set()
    for seed in range(3):  # three captioners: three pairs, then none left for this voter on this image
        match = arena.new_match(settings, str(image), key, "browser:1", random.Random(seed))
        assert {match.left_caption, match.right_caption} == {pool.captions[match.left], pool.captions[match.right]}
        seen.add(frozenset((match.left, match.right)))
        text = arena.cast_vote(arena.Match.from_state(match.to_state()), "left", "browser:1")
        assert "Left was" in text and compare.strategy_label(match.left) in text
    assert len(seen) == 3 and pool.calls == 1  # captioned once, every pair met once
    with pytest.raises(arena.ArenaError, match="every pair"):
        arena.new_match(settings, str(image), key, "browser:1")
    assert arena.new_match(settings, str(image), key, "browser:2")  # another voter still can
    board = arena.standings(settings, bootstrap=20)
    assert board.total_votes == 3 and len(board.board) == 3 and "CIDEr" in arena.agreement_note(board)

    class Request:
        username = "ada"

    assert voter_of(Request(), "b1") == "user:ada" and voter_of(None, "b1") == "browser:b1"
