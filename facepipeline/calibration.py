"""Thresholds that fit the model: one per data level, for a target false-accept rate.

ArcFace similarities live on their own scale (with ``buffalo_sc`` a genuine pair often scores
0.4-0.6), so thresholds set for another model either reject most genuine matches or accept
strangers. This module measures, on the held-out split of an index's own faces (the split of
:mod:`facepipeline.metrics`), what each threshold does *per data level*, the way recognition uses
it (:mod:`facepipeline.recognition`: a person's score is the best similarity to any of their
faces, compared with the threshold of their level):

* accept rate of level L at t: of the probes whose person is at level L, the share whose best
  similarity to their own person's gallery faces reaches t (a genuine match accepted);
* false-accept rate of level L at t: every face is also asked as a stranger (its own person left
  out); the share whose best similarity to any *other* person of level L reaches t, i.e. the rate
  at which an unknown face would be given the name of somebody at that level.

The recommended threshold of a level is the lowest one on a 0.01 grid whose FAR is at most
``target_far / levels`` (the levels that have people): a stranger is falsely accepted when *any*
level accepts them, so the levels' FARs add up to at most the target (union bound). The combined
FAR and accept rate at the recommended and at the configured thresholds are measured exactly.

A FAR can only be shown with enough strangers: with N trials, rates under ~3/N are invisible (no
false accept seen is not the same as none). With fewer than ``3 / target_far`` trials the measured
threshold would be a guess that errs on the side of naming strangers, so nothing is recommended:
each level keeps its configured threshold, and the report says how many faces are missing. (On
LFW with ``buffalo_sc``, 80 faces of 8 people measured 0.20 where 4,803 faces need 0.38-0.41.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from facepipeline.gallery.config import THRESHOLD_LEVELS, ConfidenceThresholds, DataLevels
from facepipeline.metrics import SWEEP, EvaluationConfig, GalleryScores, gallery_scores

# Genuine matches a configured threshold may reject before the retrain says so loudly.
MAX_REJECTED_GENUINE = 0.10


@dataclass(frozen=True)
class Rates:
    accept_rate: float | None
    """Genuine matches accepted (None: no probe at this level)."""
    far: float
    """Strangers accepted."""


@dataclass(frozen=True)
class LevelCalibration:
    level: str
    people: int
    probes: int
    trials: int
    recommended: float | None
    """None when the level has no people, or too few strangers to show the target (see the note)."""
    measured: float | None
    """The lowest threshold meeting the target on these faces, trusted or not."""
    at_recommended: Rates | None
    target_met: bool
    note: str


@dataclass(frozen=True)
class Calibration:
    target_far: float
    levels: DataLevels
    per_level: dict[str, LevelCalibration]
    recommended: ConfidenceThresholds
    """Recommended thresholds; a level without people keeps the configured value."""
    at_recommended: Rates
    configured: ConfidenceThresholds
    at_configured: Rates
    configured_per_level: dict[str, Rates]

    @property
    def configured_rejects(self) -> float:
        """Share of genuine matches the configured thresholds reject."""
        return round(1.0 - (self.at_configured.accept_rate or 0.0), 4)

    @property
    def trusted(self) -> bool:
        """At least one level has a recommendation these faces can back (else there is nothing to apply)."""
        return any(c.recommended is not None for c in self.per_level.values())

    @property
    def warning(self) -> str | None:
        if self.at_configured.accept_rate is None or self.configured_rejects <= MAX_REJECTED_GENUINE:
            return None
        problem = (f"the configured confidence_thresholds reject {self.configured_rejects:.1%} of genuine matches "
                   f"(more than {MAX_REJECTED_GENUINE:.0%})")
        if self.trusted:
            return (f"{problem}; recommended for FAR <= {self.target_far}: {_thresholds_text(self.recommended)} - "
                    "run `facepipeline config calibrate --apply`")
        trials = next(iter(self.per_level.values())).trials
        return (f"{problem}; {trials} faces are too few to recommend thresholds for FAR <= {self.target_far} - "
                f"`facepipeline config calibrate --far {_round_up(3 / max(trials, 1))}` can, for that rate")

    def as_dict(self) -> dict:
        return {
            "target_far": self.target_far,
            "data_levels": asdict(self.levels),
            "recommended": asdict(self.recommended),
            "at_recommended": asdict(self.at_recommended),
            "configured": asdict(self.configured),
            "at_configured": asdict(self.at_configured),
            "configured_rejects": self.configured_rejects,
            "per_level": {
                level: {**asdict(c), "configured": getattr(self.configured, level),
                        "at_configured": asdict(self.configured_per_level[level])}
                for level, c in self.per_level.items()
            },
            "warning": self.warning,
        }

    def markdown(self) -> str:
        lines = [
            "| level | people | probes | configured | accept / FAR | recommended | accept / FAR |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for level, c in self.per_level.items():
            at = self.configured_per_level[level]
            rec = c.at_recommended
            lines.append(
                f"| {level} | {c.people} | {c.probes} | {getattr(self.configured, level):.2f} | {_rates(at)} | "
                f"{'-' if c.recommended is None else f'{c.recommended:.2f}'} | {_rates(rec) if rec else '-'} |"
            )
        lines.append(
            f"| **all** | | | | {_rates(self.at_configured)} | | {_rates(self.at_recommended)} |"
        )
        return "\n".join(lines)


@dataclass
class _Scores:
    """Per probe: own-person score; per face and level: best other-person score at that level."""

    probe_level: np.ndarray  # level of each probe's person (by their faces in the whole index)
    genuine: np.ndarray  # best similarity to the probe's own gallery faces
    stranger: np.ndarray  # (faces, levels): best similarity to another person of each level
    people: list[int]
    probes: list[int]


def calibrate(
    vectors: np.ndarray,
    person_ids: Sequence[str],
    face_ids: Sequence[str],
    *,
    levels: DataLevels,
    configured: ConfidenceThresholds,
    config: EvaluationConfig | None = None,
    scores: GalleryScores | None = None,
) -> Calibration:
    """``scores``: the faces' table (:func:`facepipeline.metrics.gallery_scores`), when already made."""
    config = config or EvaluationConfig()
    group_by = level_groups(levels)
    if scores is None or not np.array_equal(scores.groups, group_by(np.bincount(scores.own, minlength=len(scores.people)))):
        scores = gallery_scores(vectors, person_ids, config, face_ids, group_by=group_by)  # not grouped by these levels
    scores = _scores(scores)
    active = [i for i, _ in enumerate(THRESHOLD_LEVELS) if scores.people[i] > 0]
    per_level_target = config.target_far / max(1, len(active))
    trials = len(scores.stranger)
    needed = math.ceil(3 / config.target_far)
    per_level: dict[str, LevelCalibration] = {}
    recommended = {}
    for i, level in enumerate(THRESHOLD_LEVELS):
        if i not in active:
            continue
        kept = getattr(configured, level)
        sweep = [(float(t), _level_rates(scores, i, float(t))) for t in SWEEP]
        passing = [(t, r) for t, r in sweep if r.far <= per_level_target and (r.accept_rate or 0) > 0]
        t, rates = passing[0] if passing else min(sweep, key=lambda tr: (tr[1].far, tr[0]))
        if trials < needed:
            note = (f"only {trials} faces to try as strangers: at least {needed} are needed to show FAR <= {config.target_far}; "
                    f"configured value kept (measured here: {t:.2f})")
            per_level[level] = LevelCalibration(
                level, scores.people[i], scores.probes[i], trials, None, t, _level_rates(scores, i, kept), False, note
            )
            recommended[level] = kept
            continue
        note = f"lowest threshold with FAR <= {per_level_target:.6f}"
        if not passing:
            note = f"no threshold reaches FAR <= {per_level_target:.6f} with accepts; the one with the lowest FAR"
        per_level[level] = LevelCalibration(level, scores.people[i], scores.probes[i], trials, t, t, rates, bool(passing), note)
        recommended[level] = t
    # A level nobody is at yet gets the strictest measured threshold: the model's scale, not the old one's.
    measured = [c.recommended for c in per_level.values() if c.recommended is not None]
    for level in THRESHOLD_LEVELS:
        if level not in per_level:
            fill = max(measured) if measured else getattr(configured, level)
            why = "the highest threshold measured at the other levels" if measured else "configured value kept"
            per_level[level] = LevelCalibration(level, 0, 0, trials, None, None, None, False, f"no people at this level: {why}")
            recommended[level] = fill
    per_level = {level: per_level[level] for level in THRESHOLD_LEVELS}
    recommended_thresholds = ConfidenceThresholds(**recommended)
    return Calibration(
        target_far=config.target_far,
        levels=levels,
        per_level=per_level,
        recommended=recommended_thresholds,
        at_recommended=_combined_rates(scores, recommended_thresholds),
        configured=configured,
        at_configured=_combined_rates(scores, configured),
        configured_per_level={
            level: _level_rates(scores, i, getattr(configured, level)) for i, level in enumerate(THRESHOLD_LEVELS)
        },
    )


def level_groups(levels: DataLevels) -> Callable[[np.ndarray], np.ndarray]:
    """For :func:`facepipeline.metrics.gallery_scores`: each person's level number, from their number
    of faces in the whole index (what recognition will use)."""

    def group_by(counts: np.ndarray) -> np.ndarray:
        return np.array([THRESHOLD_LEVELS.index(levels.level(int(n))) for n in counts], dtype=np.int64)

    return group_by


def _scores(table: GalleryScores) -> _Scores:
    level_of_person = table.groups
    stranger = np.full((len(table.own), len(THRESHOLD_LEVELS)), -1.0, dtype=np.float32)
    stranger[:, : table.stranger.shape[1]] = np.maximum(table.stranger, -1.0)
    probes = table.probes
    probe_level = level_of_person[table.own[probes]]
    return _Scores(
        probe_level=probe_level,
        genuine=table.own_score[probes],
        stranger=stranger,
        people=[int(np.sum(level_of_person == level)) for level in range(len(THRESHOLD_LEVELS))],
        probes=[int(np.sum(probe_level == level)) for level in range(len(THRESHOLD_LEVELS))],
    )


def _level_rates(scores: _Scores, level: int, threshold: float) -> Rates:
    mine = scores.probe_level == level
    accept = float(np.mean(scores.genuine[mine] >= threshold)) if mine.any() else None
    far = float(np.mean(scores.stranger[:, level] >= threshold)) if len(scores.stranger) else 0.0
    return Rates(None if accept is None else round(accept, 4), round(far, 6))


def _combined_rates(scores: _Scores, thresholds: ConfidenceThresholds) -> Rates:
    cut = np.array([getattr(thresholds, level) for level in THRESHOLD_LEVELS], dtype=np.float32)
    accepted = scores.genuine >= cut[scores.probe_level] if len(scores.genuine) else np.array([])
    far = float(np.mean((scores.stranger >= cut[None, :]).any(axis=1))) if len(scores.stranger) else 0.0
    return Rates(round(float(np.mean(accepted)), 4) if len(accepted) else None, round(far, 6))


def _rates(rates: Rates) -> str:
    accept = "-" if rates.accept_rate is None else f"{rates.accept_rate:.4f}"
    return f"{accept} / {rates.far:.5f}"


def _round_up(rate: float) -> str:
    """A false-accept rate ``N`` faces can show, written short: 3/480 -> 0.007."""
    digits = max(0, -math.floor(math.log10(rate)))
    return f"{math.ceil(rate * 10**digits) / 10**digits:g}"


def _thresholds_text(thresholds: ConfidenceThresholds) -> str:
    return ", ".join(f"{level} {getattr(thresholds, level):.2f}" for level in THRESHOLD_LEVELS)
