"""Ratings from arena votes: Bradley-Terry strengths with bootstrap 95% intervals, win rates, rank correlation.

    board = fit_ratings(list_votes())        # [Rating(model, strategy, rating, low, high, votes, ...)], best first
    players, rates, games = win_rates(votes)  # rates[i][j]: how often i's caption beat j's (None: never met)
    spearman([r.rating for r in board], ciders)

Model: P(i beats j) = p_i / (p_i + p_j) (Bradley & Terry 1952), fitted by maximum likelihood (Newton).
Ties count as half a win for each side, and so does "both bad" (neither caption was preferred: the votes
say nothing about which is better, as a tie). Every pair of captioners also gets `PRIOR_TIES` virtual tied
games, so that a captioner that never lost (or never won) keeps a finite rating and few votes shrink
towards equal strengths. Ratings are on the Elo scale, 400 * log10(p) + 1000 with the captioners' mean
at 1000, so a 100-point gap means a 64% chance of being preferred. Intervals: the 2.5th and 97.5th
percentiles of the ratings refitted on `BOOTSTRAP` resamples of the votes (with replacement, seeded).
Each model's captioners are fitted on their own: a vote only ever compares two captioners of one model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from captionlab.arena.votes import Vote

PRIOR_TIES = 1.0
BOOTSTRAP = 500
ELO_SCALE = 400.0 / math.log(10.0)
ELO_MEAN = 1000.0
TIE_METHOD = ("Bradley-Terry with ties and 'both bad' as half a win each side, "
              f"{PRIOR_TIES:g} virtual tied game per pair (prior), Elo scale (mean 1000)")


@dataclass(frozen=True)
class Rating:
    """One captioner's place on the leaderboard (rating and its bootstrap 95% interval, Elo scale)."""

    model: str
    strategy: str
    rating: float
    low: float
    high: float
    votes: int
    wins: int
    losses: int
    ties: int
    both_bad: int

    def to_json(self) -> dict:
        return {"model": self.model, "strategy": self.strategy, "rating": round(self.rating, 1),
                "low": round(self.low, 1), "high": round(self.high, 1), "votes": self.votes, "wins": self.wins,
                "losses": self.losses, "ties": self.ties, "both_bad": self.both_bad}


def _games(votes: Sequence[Vote], players: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per vote: (left index, right index, the left's score: 1 won, 0 lost, 0.5 tie or both bad)."""
    index = {p: k for k, p in enumerate(players)}
    left = np.array([index[v.left] for v in votes], dtype=int)
    right = np.array([index[v.right] for v in votes], dtype=int)
    score = np.array([{"left": 1.0, "right": 0.0}.get(v.outcome, 0.5) for v in votes])
    return left, right, score


def _wins_of(left: np.ndarray, right: np.ndarray, score: np.ndarray, n: int) -> np.ndarray:
    wins = np.zeros((n, n))
    np.add.at(wins, (left, right), score)
    np.add.at(wins, (right, left), 1.0 - score)
    return wins


def win_matrix(votes: Sequence[Vote], players: Sequence[str]) -> np.ndarray:
    """wins[i, j]: games i won against j, a tie or both-bad counting half to each."""
    return _wins_of(*_games(votes, players), len(players))


def fit_bradley_terry(wins: np.ndarray, prior_ties: float = PRIOR_TIES, iterations: int = 50,
                      tolerance: float = 1e-9) -> np.ndarray:
    """Log-strengths (mean 0) maximising the Bradley-Terry likelihood of `wins` plus `prior_ties` per pair,
    by Newton's method (the log-likelihood is concave; the prior makes its maximum unique and finite)."""
    n = wins.shape[0]
    if n == 0:
        return np.zeros(0)
    wins = wins + (prior_ties / 2.0) * (1.0 - np.eye(n))
    games = wins + wins.T
    theta = np.zeros(n)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(theta[None, :] - theta[:, None]))  # p[i, j]: chance i beats j
        gradient = wins.sum(axis=1) - (games * p).sum(axis=1)
        weights = games * p * p.T
        laplacian = np.diag(weights.sum(axis=1)) - weights
        step = np.linalg.solve(laplacian + np.ones((n, n)) / n, gradient)  # the ones fix the free offset
        theta = theta + step
        theta -= theta.mean()
        if np.max(np.abs(step)) < tolerance:
            break
    return theta


def _elo(log_strength: np.ndarray) -> np.ndarray:
    return ELO_MEAN + ELO_SCALE * (log_strength - log_strength.mean())


def _counts(votes: Sequence[Vote], player: str) -> dict[str, int]:
    mine = [v for v in votes if player in (v.left, v.right)]
    return {"votes": len(mine), "wins": sum(v.winner() == player for v in mine),
            "losses": sum(v.winner() not in (None, player) for v in mine),
            "ties": sum(v.outcome == "tie" for v in mine), "both_bad": sum(v.outcome == "both_bad" for v in mine)}


def fit_ratings(votes: Sequence[Vote], bootstrap: int = BOOTSTRAP, seed: int = 0) -> list[Rating]:
    """Every voted captioner's rating with its bootstrap 95% interval, per model, best first."""
    board: list[Rating] = []
    for model in sorted({v.model for v in votes}):
        mine = [v for v in votes if v.model == model]
        players = sorted({str(v.left) for v in mine} | {str(v.right) for v in mine})
        left, right, score = _games(mine, players)
        point = _elo(fit_bradley_terry(_wins_of(left, right, score, len(players))))
        rng = np.random.default_rng(seed)
        samples = np.empty((bootstrap, len(players)))
        for b in range(bootstrap):
            pick = rng.integers(0, len(mine), len(mine))
            samples[b] = _elo(fit_bradley_terry(_wins_of(left[pick], right[pick], score[pick], len(players))))
        low, high = (np.percentile(samples, [2.5, 97.5], axis=0) if bootstrap else (point, point))
        for k, player in enumerate(players):
            board.append(Rating(model, player, float(point[k]), float(low[k]), float(high[k]), **_counts(mine, player)))
    return sorted(board, key=lambda r: (r.model, -r.rating))


def win_rates(votes: Sequence[Vote]) -> tuple[list[str], list[list[float | None]], list[list[int]]]:
    """(captioners, rates, games): rates[i][j] is the share of i-vs-j games i won (ties half), None if none."""
    players = sorted({v.left for v in votes} | {v.right for v in votes})
    wins = win_matrix(votes, players)
    games = wins + wins.T
    rates = [[None if games[i, j] == 0 else float(wins[i, j] / games[i, j]) for j in range(len(players))]
             for i in range(len(players))]
    return players, rates, [[int(round(g)) for g in row] for row in games]


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, tied values sharing their mean rank."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        same = values == value
        ranks[same] = ranks[same].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation of paired values; None with fewer than 3 pairs or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs paired values, got {len(x)} and {len(y)}")
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])
