"""Reference-based captioning metrics: BLEU-4, METEOR, ROUGE-L, CIDEr(-D) and SPICE.

The numbers are pycocoevalcap's, computed the way its COCO evaluation does (PTB tokenization,
then each scorer's `compute_score` on the tokenized captions), with these differences in the
plumbing only:

- Tokenization runs ONCE per evaluation: predictions and references go through a single call
  of the same Stanford PTBTokenizer (same jar, same `-preserveLines -lowerCase` flags, same
  punctuation removal). pycocoevalcap's wrapper writes its temp file into site-packages, only
  replaces "\\n" (so a caption holding "\\r", U+2028, U+0085 or a form feed shifts every later
  caption onto the wrong image) and decodes Java's output with the platform charset. Here every
  line-breaking character becomes a space, Java reads and writes UTF-8, and the number of output
  lines is checked. Emoji and other characters the tokenizer cannot handle are dropped by it (a
  warning on Java's stderr), exactly as in pycocoevalcap.
- An empty prediction is scored (0 on every metric), an image whose references are empty is
  excluded from these metrics and counted (`excluded_no_references`); blank reference strings
  are dropped first.
- SPICE runs through `captionlab.evaluation.spice` and is reported as unavailable, with the
  reason and the fix, when its CoreNLP jars are missing. A candidate that is empty after
  tokenization gets SPICE 0 without being sent to Java (SPICE would give NaN and turn the
  corpus mean into NaN); per-image NaN from SPICE is likewise counted as 0 and noted.
- METEOR's Java process takes several seconds and 0.6-1.2 GB to load its paraphrase tables, so
  one pycocoevalcap `Meteor` instance (serial GC: the smaller figure) is shared by the
  evaluations of a process: started while the tokenizer runs, closed after
  `$CAPTIONLAB_METEOR_KEEPALIVE_S` (default 120) idle seconds and at exit. Its scores do not
  depend on earlier calls (each call is one stateless EVAL).

Scale: `MetricReport.corpus` and `.per_image` are on pycocoevalcap's scale (0-1; CIDEr can
exceed 1). The paper prints every one of these metrics x100 (e.g. CIDEr 105.7):
`MetricReport.paper_scale()` gives that view, and the results store keeps that scale.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Hashable, Iterable, Mapping, Sequence

from captionlab.names import REFERENCE_METRICS

METRIC_NAMES = REFERENCE_METRICS  # captionlab.names: the one list
PAPER_SCALE = 100.0  # the paper prints BLEU-4, METEOR, ROUGE-L, CIDEr and SPICE x100
PTB_TOKENIZER_CLASS = "edu.stanford.nlp.process.PTBTokenizer"
# Everything Python's str.splitlines() (and Java's line reader) treats as a line boundary.
_LINE_BREAKS = re.compile("[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]")

ImageId = Hashable


@dataclass
class CaptionLengths:
    """Caption lengths in words (PTB tokens without punctuation, as the metrics see them)."""

    mean_prediction_words: float
    mean_reference_words: float | None  # None when no image has references
    n_predictions: int
    n_references: int
    prediction_words: dict = field(default_factory=dict)  # image id -> words in its prediction


@dataclass
class MetricReport:
    """Scores of one set of predictions against references (pycocoevalcap scale, see module doc)."""

    corpus: dict[str, float]  # metric -> corpus score, for the metrics that could be computed
    per_image: dict[str, dict]  # metric -> {image id -> score}, scored images only
    unavailable: dict[str, str]  # metric -> why it has no number (and how to fix that)
    n_images: int  # images scored (those with at least one reference)
    n_predictions: int
    excluded_no_references: list  # image ids left out of the metrics: no references
    lengths: CaptionLengths
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def n_excluded(self) -> int:
        return len(self.excluded_no_references)

    def paper_scale(self) -> dict[str, float]:
        """Corpus scores x100, as the paper prints them (CIDEr 1.057 -> 105.7)."""
        return {name: value * PAPER_SCALE for name, value in self.corpus.items()}

    def per_image_paper_scale(self) -> dict[str, dict]:
        """Per-image scores x100."""
        return {name: {k: v * PAPER_SCALE for k, v in scores.items()} for name, scores in self.per_image.items()}

    def paper_scale_metrics(self) -> dict[str, float]:
        """Same as `paper_scale()`; the name `results.collect_metrics` looks for."""
        return self.paper_scale()

    def to_dict(self) -> dict:
        """JSON-friendly view (image ids become strings)."""
        data = asdict(self)
        data["per_image"] = {m: {str(k): v for k, v in s.items()} for m, s in self.per_image.items()}
        data["lengths"]["prediction_words"] = {str(k): v for k, v in self.lengths.prediction_words.items()}
        data["excluded_no_references"] = [str(k) for k in self.excluded_no_references]
        data["scale"] = "pycocoevalcap (0-1); x100 for the paper's scale"
        return data


def _start_meteor():
    """pycocoevalcap's `Meteor` (its compute_score, its jar and flags) with two changes to the
    Java process only: the serial garbage collector, which halves its resident memory (about
    0.6 instead of 1.2 GB) at the same load time, and stderr discarded rather than piped and
    never read. Scores are unaffected."""
    from pycocoevalcap.meteor import meteor as pycoco_meteor

    class LeanMeteor(pycoco_meteor.Meteor):
        def __init__(self) -> None:  # same as Meteor.__init__ apart from the two changes above
            self.meteor_cmd = ["java", "-jar", "-Xmx2G", "-XX:+UseSerialGC", pycoco_meteor.METEOR_JAR,
                               "-", "-", "-stdio", "-l", "en", "-norm"]
            self.meteor_p = subprocess.Popen(
                self.meteor_cmd, cwd=os.path.dirname(os.path.abspath(pycoco_meteor.__file__)),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            self.lock = threading.Lock()

    return LeanMeteor()


class _SharedMeteor:
    """One pycocoevalcap Meteor process for the whole Python process, closed when idle."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meteor = None
        self._users = 0
        self._timer: threading.Timer | None = None

    @contextlib.contextmanager
    def session(self):
        """Yield a running Meteor (starting its JVM now if needed; it loads in the background)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._meteor is not None and self._meteor.meteor_p.poll() is not None:
                self._meteor = None  # the JVM died; start a new one
            if self._meteor is None:
                self._meteor = _start_meteor()
            self._users += 1
            meteor = self._meteor
        failed = False
        try:
            yield meteor
        except BaseException:
            failed = True
            raise
        finally:
            with self._lock:
                self._users -= 1
                if failed and self._meteor is meteor:
                    # Its stdin/stdout may be out of step now: no new session gets it; it is closed
                    # now if nobody else holds it, else when the last holder drops it.
                    if self._users == 0:
                        self._close_locked()
                    else:
                        self._meteor = None
                elif self._users == 0 and self._meteor is not None:
                    keepalive = float(os.environ.get("CAPTIONLAB_METEOR_KEEPALIVE_S", "120"))
                    self._timer = threading.Timer(keepalive, self.close_if_idle)
                    self._timer.daemon = True
                    self._timer.start()

    def close_if_idle(self) -> None:
        with self._lock:
            if self._users == 0:
                self._close_locked()

    def _close_locked(self) -> None:
        if self._meteor is not None:
            meteor, self._meteor = self._meteor, None
            meteor.__del__()  # pycocoevalcap's own shutdown: close stdin, kill, wait


_SHARED_METEOR = _SharedMeteor()
atexit.register(_SHARED_METEOR.close_if_idle)


def meteor_session():
    """Context manager yielding the process-wide pycocoevalcap `Meteor` (started if needed)."""
    return _SHARED_METEOR.session()


class TokenizerError(RuntimeError):
    """The PTB tokenizer (Java) could not run or returned something unusable."""


def _pycocoevalcap_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError("pycocoevalcap is not installed (pinned in requirements.txt)")
    return Path(list(spec.submodule_search_locations)[0])


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """Tokenize captions like pycocoevalcap's PTBTokenizer, in one Java call: lower-cased PTB
    tokens joined by spaces, pycocoevalcap's punctuation tokens removed. Order is preserved."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, STANFORD_CORENLP_3_4_1_JAR

    if not captions:
        return []
    if shutil.which("java") is None:
        raise TokenizerError("java is not on PATH: pycocoevalcap's PTB tokenizer and METEOR are Java "
                             "programs; install a Java runtime (8 or newer)")
    jar = _pycocoevalcap_dir() / "tokenizer" / STANFORD_CORENLP_3_4_1_JAR
    lines = [_LINE_BREAKS.sub(" ", caption) for caption in captions]
    with tempfile.TemporaryDirectory(prefix="captionlab-ptb-") as tmp:
        source = Path(tmp) / "captions.txt"
        source.write_text("\n".join(lines) + "\n", encoding="utf-8")
        command = ["java", "-Dfile.encoding=UTF-8", "-cp", str(jar), PTB_TOKENIZER_CLASS,
                   "-preserveLines", "-lowerCase", "-encoding", "UTF-8", str(source)]
        completed = subprocess.run(command, capture_output=True)
    if completed.returncode != 0:
        raise TokenizerError(f"PTB tokenizer failed ({completed.returncode}): "
                             + completed.stderr.decode("utf-8", "replace")[-1000:])
    output = completed.stdout.decode("utf-8", "replace").split("\n")
    if len(output) == len(lines) + 1 and output[-1] == "":
        output.pop()  # the newline ending the last line
    if len(output) != len(lines):
        raise TokenizerError(f"PTB tokenizer returned {len(output)} lines for {len(lines)} captions")
    punctuation = set(PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w not in punctuation) for line in output]


def _check_metric_names(metrics: Iterable[str]) -> list[str]:
    requested = list(dict.fromkeys(metrics))
    unknown = [m for m in requested if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {list(METRIC_NAMES)}")
    return [m for m in METRIC_NAMES if m in requested]


def _check_inputs(predictions: Mapping, references: Mapping) -> None:
    if not predictions:
        raise ValueError("no predictions to score")
    only_predicted = [k for k in predictions if k not in references]
    only_referenced = [k for k in references if k not in predictions]
    if only_predicted or only_referenced:
        raise ValueError(
            "prediction and reference image ids differ: "
            f"{len(only_predicted)} predicted without references entry (e.g. {only_predicted[:5]}), "
            f"{len(only_referenced)} referenced without prediction (e.g. {only_referenced[:5]})")
    for image_id, caption in predictions.items():
        if caption is not None and not isinstance(caption, str):
            raise TypeError(f"prediction for image {image_id!r} is {type(caption).__name__}, not str")
    for image_id, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, (list, tuple)):
            raise TypeError(f"references for image {image_id!r} must be a list of str, got {type(refs).__name__}")


def _run_scorers(names: list[str], gts: dict, res: dict, spice_jar_dir, report: MetricReport, meteor) -> None:
    """Fill `report` with each requested metric (or its unavailability reason)."""
    ids = list(gts)
    for name in names:
        try:
            if name == "BLEU-4":
                from pycocoevalcap.bleu.bleu import Bleu

                score, scores = Bleu(4).compute_score(gts, res, verbose=0)
                corpus, per_image = score[3], scores[3]
            elif name == "METEOR":
                # METEOR's stdin protocol separates fields with '|||'; pycocoevalcap strips it from
                # the hypothesis only. A no-op for any caption that does not contain it.
                safe_gts = {k: [r.replace("|||", "") for r in v] for k, v in gts.items()}
                corpus, per_image = meteor.compute_score(safe_gts, res)
            elif name == "ROUGE-L":
                from pycocoevalcap.rouge.rouge import Rouge

                corpus, per_image = Rouge().compute_score(gts, res)
            elif name == "CIDEr":
                from pycocoevalcap.cider.cider import Cider  # pycocoevalcap's Cider is CIDEr-D

                corpus, per_image = Cider().compute_score(gts, res)
            else:
                corpus, per_image = _spice(gts, res, spice_jar_dir, report)
                if corpus is None:
                    continue
        except Exception as exc:  # a scorer that fails is reported, with why, never dropped silently
            if name == "SPICE":
                report.unavailable[name] = (f"SPICE failed: {exc}. Fix: see "
                                            "`python -m captionlab.evaluation.spice status`")
                continue
            raise
        values = list(per_image.values()) if isinstance(per_image, dict) else list(per_image)
        report.corpus[name] = float(corpus)
        report.per_image[name] = {k: float(v) for k, v in zip(ids, values)}


def _spice(gts: dict, res: dict, jar_dir, report: MetricReport):
    from captionlab.evaluation import spice

    status = spice.spice_status(jar_dir)
    if not status.available:
        report.unavailable["SPICE"] = f"{status.reason}. Fix: {status.fix}"
        return None, None
    non_empty = [k for k in gts if res[k][0].strip()]
    per_image = {k: 0.0 for k in gts}
    if non_empty:
        _, scored = spice.run_spice({k: gts[k] for k in non_empty}, {k: res[k][0] for k in non_empty},
                                    jar_dir=status.jar_dir)
        n_nan = sum(math.isnan(v) for v in scored.values())
        if n_nan:
            report.notes.append(f"SPICE: {n_nan} image(s) with no scene-graph tuples (NaN) counted as 0")
        per_image.update({k: 0.0 if math.isnan(v) else v for k, v in scored.items()})
    if len(non_empty) < len(gts):
        report.notes.append(f"SPICE: {len(gts) - len(non_empty)} empty prediction(s) scored 0 without parsing")
    return sum(per_image.values()) / len(per_image), per_image


def score_captions(
    predictions: Mapping[ImageId, str],
    references: Mapping[ImageId, Sequence[str]],
    metrics: Iterable[str] = METRIC_NAMES,
    *,
    spice_jar_dir: str | Path | None = None,
) -> MetricReport:
    """Score `predictions` (image id -> caption) against `references` (image id -> captions).

    Both must have the same image ids. Returns corpus and per-image scores on pycocoevalcap's
    scale (`report.paper_scale()` for the paper's x100), caption-length statistics, and for each
    metric that could not be computed (SPICE without its jars) the reason in `unavailable`.
    """
    started = time.perf_counter()
    names = _check_metric_names(metrics)
    _check_inputs(predictions, references)
    ids = list(predictions)
    clean_refs = {k: [r for r in references[k] if isinstance(r, str) and r.strip()] for k in ids}
    scored = [k for k in ids if clean_refs[k]]
    excluded = [k for k in ids if not clean_refs[k]]

    with contextlib.ExitStack() as stack:
        # Start METEOR's JVM first: it loads its tables while the tokenizer runs.
        meteor = stack.enter_context(_SHARED_METEOR.session()) if scored and "METEOR" in names else None
        report = _score_tokenized(names, predictions, ids, clean_refs, scored, excluded, spice_jar_dir, meteor)
    report.seconds = time.perf_counter() - started
    return report


def _score_tokenized(names, predictions, ids, clean_refs, scored, excluded, spice_jar_dir, meteor) -> MetricReport:
    flat = [predictions[k] or "" for k in ids] + [r for k in scored for r in clean_refs[k]]
    tokens = iter(ptb_tokenize(flat))
    tok_predictions = {k: next(tokens) for k in ids}
    tok_references = {k: [next(tokens) for _ in clean_refs[k]] for k in scored}

    prediction_words = {k: len(tok_predictions[k].split()) for k in ids}
    reference_words = [len(r.split()) for refs in tok_references.values() for r in refs]
    lengths = CaptionLengths(
        mean_prediction_words=sum(prediction_words.values()) / len(ids),
        mean_reference_words=sum(reference_words) / len(reference_words) if reference_words else None,
        n_predictions=len(ids),
        n_references=len(reference_words),
        prediction_words=prediction_words,
    )
    report = MetricReport(corpus={}, per_image={}, unavailable={}, n_images=len(scored), n_predictions=len(ids),
                          excluded_no_references=excluded, lengths=lengths, seconds=0.0)
    if excluded:
        report.notes.append(f"{len(excluded)} image(s) without references excluded from {', '.join(names)}")
    if not scored:
        for name in names:
            report.unavailable[name] = "no image has references"
    else:
        gts = {k: tok_references[k] for k in scored}
        res = {k: [tok_predictions[k]] for k in scored}
        _run_scorers(names, gts, res, spice_jar_dir, report, meteor)
    return report
