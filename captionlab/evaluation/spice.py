"""SPICE: where its Stanford CoreNLP jars come from, whether it can run, and running it.

pycocoevalcap ships `spice-1.0.jar` and most of its libraries, but not the two Stanford
CoreNLP 3.6.0 jars SPICE parses captions with (`stanford-corenlp-3.6.0.jar`,
`stanford-corenlp-3.6.0-models.jar`). Its own downloader points at a dead link and no package
registry reachable here carries them, so captionlab looks for them in a configured folder:

1. the `jar_dir` argument, else
2. `$CAPTIONLAB_SPICE_JARS` (when either is given, only that folder is considered), else
3. pycocoevalcap's own `spice/lib/` folder, else
4. `<workspace>/spice/lib` (where `fetch_spice_jars()` puts them by default).

Users who are online get them from Maven Central with
`python -m captionlab.evaluation.spice fetch [--dest DIR]` (checked against Maven's SHA-1); offline,
it says in one line where to put them by hand.
When they are missing, SPICE is reported as unavailable with the reason and the fix: never a
made-up number, never silently dropped (`spice_status()`).

Running: pycocoevalcap starts `java -jar -Xmx8G spice-1.0.jar ...` from inside site-packages,
with temporary files and an LMDB cache there. `run_spice` runs the same scorer
(`edu.anu.spice.SpiceScorer`, same `-subset -silent` flags, same corpus mean of the per-image
"All" F-scores) with the CoreNLP jars put on the class path from the configured folder, the
temporary files in a private temp folder, no shared cache unless `$CAPTIONLAB_SPICE_CACHE`
names one (concurrent runs on one LMDB cache can freeze), `--add-opens` so SPICE's FST
serialisation works on Java 17+, and a heap cap of 8G or half the machine's memory, whichever
is less (`$CAPTIONLAB_SPICE_XMX` overrides; -Xmx is a cap, not an allocation).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import NamedTuple

SPICE_JARS_ENV = "CAPTIONLAB_SPICE_JARS"
SPICE_XMX_ENV = "CAPTIONLAB_SPICE_XMX"
SPICE_CACHE_ENV = "CAPTIONLAB_SPICE_CACHE"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
MAVEN_BASE_URL = "https://repo1.maven.org/maven2/edu/stanford/nlp/stanford-corenlp/3.6.0/"
SPICE_MAIN_CLASS = "edu.anu.spice.SpiceScorer"
# Java 17 forbids the reflective access SPICE's serialisation libraries (FST) rely on; Java 8
# does not know --add-opens, and IgnoreUnrecognizedVMOptions lets it skip them.
JAVA_OPENS = ("-XX:+IgnoreUnrecognizedVMOptions",) + tuple(
    f"--add-opens=java.base/{package}=ALL-UNNAMED"
    for package in ("java.lang", "java.util", "java.math", "java.net", "java.text", "java.io",
                    "java.util.concurrent", "java.lang.reflect", "java.nio")
)
FETCH_COMMAND = "python -m captionlab.evaluation.spice fetch"


class SpiceStatus(NamedTuple):
    """Whether SPICE can run; when not, `reason` says why and `fix` how to make it run."""

    available: bool
    reason: str
    fix: str
    jar_dir: Path | None = None


class SpiceError(RuntimeError):
    """SPICE could not run or its output could not be read."""


def pycocoevalcap_spice_dir() -> Path | None:
    """The `spice/` folder inside the installed pycocoevalcap (None if not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "spice"


def default_jar_dir() -> Path:
    """Where `fetch_spice_jars()` puts the CoreNLP jars unless told otherwise."""
    from captionlab import paths

    return paths.workspace() / "spice" / "lib"


def _missing_jars(folder: Path) -> list[str]:
    """The CoreNLP jars that `folder` lacks or holds only as broken (non-zip) files."""
    missing = []
    for name in CORENLP_JARS:
        jar = folder / name
        if not jar.is_file() or jar.stat().st_size == 0 or not zipfile.is_zipfile(jar):
            missing.append(name)
    return missing


def _candidate_dirs(jar_dir: str | Path | None) -> tuple[list[Path], str]:
    """Folders to look in for the jars, and a phrase saying where they came from."""
    if jar_dir is not None:
        return [Path(jar_dir).expanduser()], f"the folder given ({jar_dir})"
    configured = os.environ.get(SPICE_JARS_ENV, "").strip()
    if configured:
        return [Path(configured).expanduser()], f"${SPICE_JARS_ENV} ({configured})"
    folders = []
    spice_dir = pycocoevalcap_spice_dir()
    if spice_dir is not None:
        folders.append(spice_dir / "lib")
    folders.append(default_jar_dir())
    return folders, "the default folders (" + ", ".join(str(f) for f in folders) + f"; ${SPICE_JARS_ENV} not set)"


def find_jar_dir(jar_dir: str | Path | None = None) -> Path | None:
    """The first candidate folder holding both CoreNLP jars, or None."""
    folders, _ = _candidate_dirs(jar_dir)
    return next((folder for folder in folders if not _missing_jars(folder)), None)


def spice_status(jar_dir: str | Path | None = None) -> SpiceStatus:
    """Can SPICE run here? Checks java, pycocoevalcap's spice-1.0.jar and the CoreNLP jars."""
    fix_jars = (
        f"run `{FETCH_COMMAND}` while online (downloads both jars from Maven Central into "
        f"{default_jar_dir()}), or put {' and '.join(CORENLP_JARS)} in a folder and set "
        f"${SPICE_JARS_ENV} to it"
    )
    if shutil.which("java") is None:
        return SpiceStatus(False, "java is not on PATH (SPICE is a Java program)",
                           "install a Java runtime (8 or newer) and put `java` on PATH")
    spice_dir = pycocoevalcap_spice_dir()
    if spice_dir is None or not (spice_dir / "spice-1.0.jar").is_file():
        return SpiceStatus(False, "pycocoevalcap's spice-1.0.jar is not installed",
                           "install the pinned requirements (pycocoevalcap==1.2)")
    folders, origin = _candidate_dirs(jar_dir)
    for folder in folders:
        if not _missing_jars(folder):
            return SpiceStatus(True, f"Stanford CoreNLP 3.6.0 jars found in {folder}", "", folder)
    missing = sorted({name for folder in folders for name in _missing_jars(folder)})
    reason = f"Stanford CoreNLP 3.6.0 jars for SPICE not found in {origin}: missing {', '.join(missing)}"
    return SpiceStatus(False, reason, fix_jars)


def fetch_spice_jars(dest: str | Path | None = None, *, quiet: bool = False) -> Path:
    """Download both CoreNLP 3.6.0 jars from Maven Central into `dest` (needs internet).

    Each jar is checked against Maven's published SHA-1 and moved into place atomically, so an
    interrupted download never leaves a half jar that looks present. Returns the folder.
    """
    dest = Path(dest).expanduser() if dest is not None else default_jar_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for name in CORENLP_JARS:
        target = dest / name
        if target.is_file() and zipfile.is_zipfile(target):
            if not quiet:
                print(f"{target} already present")
            continue
        url = MAVEN_BASE_URL + name
        partial = dest / (name + ".part")
        sha1 = hashlib.sha1()
        try:
            with urllib.request.urlopen(url + ".sha1", timeout=60) as response:
                expected_sha1 = response.read().decode().split()[0].strip().lower()
            if not quiet:
                print(f"downloading {url}")
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                while chunk := response.read(1 << 20):
                    sha1.update(chunk)
                    out.write(chunk)
        except OSError as exc:  # URLError, HTTPError and timeouts are all OSErrors
            partial.unlink(missing_ok=True)
            raise _unreachable(exc, dest) from None
        if sha1.hexdigest() != expected_sha1:
            partial.unlink(missing_ok=True)
            raise SpiceError(f"{url}: SHA-1 {sha1.hexdigest()} does not match Maven's {expected_sha1}")
        os.replace(partial, target)
    return dest


def _unreachable(error: OSError, dest: Path) -> SpiceError:
    """One line for a failed download: what went wrong, and how to put the jars in place by hand."""
    reason = getattr(error, "reason", None) or error
    return SpiceError(
        f"cannot download from {urllib.parse.urlsplit(MAVEN_BASE_URL).netloc} ({reason}); on a machine that "
        f"can, get {' and '.join(CORENLP_JARS)} from {MAVEN_BASE_URL} and put them in {dest} (or in any folder "
        f"named by ${SPICE_JARS_ENV}); `python -m captionlab.evaluation.spice status` checks them"
    )


def java_heap_cap() -> str:
    """-Xmx value for SPICE: $CAPTIONLAB_SPICE_XMX, else min(8G, half of physical memory)."""
    configured = os.environ.get(SPICE_XMX_ENV, "").strip()
    if configured:
        return configured
    try:
        total_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return "8G"
    return f"{max(1, min(8, int(total_gib // 2)))}G"


def _float_or_nan(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def run_spice(
    references: dict[str, list[str]],
    predictions: dict[str, str],
    *,
    jar_dir: str | Path | None = None,
    timeout_s: float | None = None,
) -> tuple[float, dict[str, float]]:
    """SPICE F-scores for tokenized captions: (corpus mean, per-image "All" F-score).

    Same computation as pycocoevalcap's `Spice.compute_score` (mean over images of the
    per-image F-score). Raises SpiceError when SPICE is unavailable or fails; callers report
    that as "unavailable" with the message. Per-image NaN (SPICE found no tuples to compare)
    stays NaN here; `metrics.score_captions` decides what to do with it.
    """
    status = spice_status(jar_dir)
    if not status.available:
        raise SpiceError(f"{status.reason}. Fix: {status.fix}")
    spice_jar = pycocoevalcap_spice_dir() / "spice-1.0.jar"
    class_path = os.pathsep.join([str(spice_jar)] + [str(status.jar_dir / name) for name in CORENLP_JARS])
    image_ids = list(predictions)
    with tempfile.TemporaryDirectory(prefix="captionlab-spice-") as tmp:
        in_path, out_path = Path(tmp) / "input.json", Path(tmp) / "output.json"
        # SPICE keys results by image_id; use the position so any id type round-trips.
        payload = [{"image_id": index, "test": predictions[image_id], "refs": references[image_id]}
                   for index, image_id in enumerate(image_ids)]
        in_path.write_text(json.dumps(payload), encoding="utf-8")
        command = ["java", f"-Xmx{java_heap_cap()}", "-Dfile.encoding=UTF-8", *JAVA_OPENS,
                   "-cp", class_path, SPICE_MAIN_CLASS, str(in_path), "-out", str(out_path),
                   "-subset", "-silent"]
        cache_dir = os.environ.get(SPICE_CACHE_ENV, "").strip()
        if cache_dir:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            command[-2:-2] = ["-cache", cache_dir]
        try:
            completed = subprocess.run(command, capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise SpiceError(f"SPICE did not finish within {timeout_s} s") from exc
        if completed.returncode != 0 or not out_path.is_file():
            tail = completed.stderr.decode("utf-8", "replace").strip()[-1500:]
            raise SpiceError(f"SPICE exited with status {completed.returncode}: {tail}")
        results = json.loads(out_path.read_text(encoding="utf-8"))
    by_index = {item["image_id"]: _float_or_nan(item["scores"]["All"]["f"]) for item in results}
    per_image = {image_id: by_index.get(index, math.nan) for index, image_id in enumerate(image_ids)}
    corpus = float(sum(per_image.values()) / len(per_image)) if per_image else math.nan
    return corpus, per_image


def main(argv: list[str] | None = None) -> int:
    """`python -m captionlab.evaluation.spice {status,fetch [--dest DIR]}`."""
    parser = argparse.ArgumentParser(prog="python -m captionlab.evaluation.spice", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("status", help="say whether SPICE can run here, and if not why and how to fix it")
    fetch = sub.add_parser("fetch", help="download the Stanford CoreNLP 3.6.0 jars from Maven Central")
    fetch.add_argument("--dest", type=Path, default=None, help=f"folder for the jars (default {default_jar_dir()})")
    args = parser.parse_args(argv)
    if args.action == "fetch":
        try:
            folder = fetch_spice_jars(args.dest)
        except SpiceError as exc:  # offline, or a bad download: one line, not a traceback
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"CoreNLP jars are in {folder}")
        if args.dest is not None and find_jar_dir() != folder:
            print(f"set {SPICE_JARS_ENV}={folder} so captionlab uses them")
        return 0
    status = spice_status()
    print(("SPICE available: " if status.available else "SPICE unavailable: ") + status.reason)
    if status.fix:
        print("fix: " + status.fix)
    return 0 if status.available else 1


if __name__ == "__main__":
    sys.exit(main())
