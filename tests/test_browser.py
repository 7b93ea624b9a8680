"""The real app in headless Chromium: Compare captions an upload, Benchmarks draws plotly charts, a
training run started from the Train form advances and is still there after a page reload; the Train form
refuses fractions where whole numbers go, and its log opens at the newest line; Compare labels uploads
that share a file name apart, captions with a run of the workspace beside the served strategies, and, serving
the embedded models, says what they know beside an upload's captions (and nothing of it with other weights);
the drill-down shows each image, its caption and all its references; the Arena takes votes, names the
captioners after each and rates them.

Chromium is Debian's (/usr/bin/chromium), driven by playwright's sync API; nothing is downloaded. Where it is
missing these tests fail (scripts/setup installs it), rather than skip and let a green run hide them.
Screenshots go to $CAPTIONLAB_SCREENSHOTS when set (else the test's temp folder).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from test_app import served_checkpoints, start_app, stop_app, write_png  # noqa: F401  (fixture re-used)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 120_000  # every wait is bounded; CPU captioning and training on 2 shared cores are slow


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_llava_dir, served_checkpoints):  # noqa: F811
    """The app on a free port, serving the tiny model and its strategies, with a tiny world to train on."""
    home = tmp_path_factory.mktemp("browser-home")
    previous = os.environ.get("CAPTIONLAB_HOME")
    os.environ["CAPTIONLAB_HOME"] = str(home)
    try:
        from captionlab import paths
        from captionlab.world import write_world

        write_world(paths.world_dir(), seed=0, scale=0.02, workers=1)
    finally:
        if previous is None:
            os.environ.pop("CAPTIONLAB_HOME")
        else:
            os.environ["CAPTIONLAB_HOME"] = previous
    # the tests' runs and jobs share one app: its cap on concurrent work (test_jobs tests the cap) must not queue a
    # later test's run behind an earlier test's
    process, url = start_app(["--model", str(tiny_llava_dir), "--checkpoints", str(served_checkpoints),
                              "--device", "cpu", "--max-new-tokens", "4"], home,
                             env={"CAPTIONLAB_MAX_ACTIVE_JOBS": "8"})
    yield url, home
    stop_app(process)
    from captionlab.training import launcher

    os.environ["CAPTIONLAB_HOME"] = str(home)  # stop any run the tests left going
    try:
        for run in launcher.runs_db.list_runs():
            if run["state"] in launcher.ACTIVE_STATES:
                try:
                    launcher.stop_run(run["run_id"], grace_s=5)
                except launcher.LaunchError:
                    pass
    finally:
        if previous is None:
            os.environ.pop("CAPTIONLAB_HOME")
        else:
            os.environ["CAPTIONLAB_HOME"] = previous


@pytest.fixture(scope="module")
def served_embedded(tmp_path_factory):
    """The app as `python app.py` starts it: the embedded study's models."""
    home = tmp_path_factory.mktemp("embedded-home")
    process, url = start_app(["--device", "cpu"], home)
    yield url
    stop_app(process)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `bash scripts/setup` installs it (apt, as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_app(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.goto(url, timeout=WAIT_MS)
    wait_until_ready(page)
    return page


def wait_until_ready(page) -> None:
    """The page drawn and a load event answered (the Compare tab's list of runs, labelled "Your runs" until its
    load event fills it): an upload sent before gradio's client is connected can be lost (the uploaded file's row
    never showed once in five fresh runs)."""
    page.wait_for_selector("#compare-gallery", timeout=WAIT_MS)
    page.wait_for_function("document.querySelector('#compare-runs').innerText.includes('finished')",
                           timeout=WAIT_MS)


@pytest.fixture
def page(browser, served):
    url, _ = served
    page = open_app(browser, url)
    yield page
    page.close()


def upload(page, files: list[Path]) -> None:
    """Set the Compare tab's files and wait until the last one is listed; sent again once if its row never shows."""
    for attempt in range(2):
        page.locator("#compare-upload input[type=file]").set_input_files([str(f) for f in files])
        try:  # the uploaded file's row, wherever gradio renders it (its element id moves between renders)
            page.get_by_text(files[-1].stem).first.wait_for(timeout=WAIT_MS // 2)
            return
        except Exception:
            if attempt:
                raise


def caption_uploads(page, count: int = 1) -> str:
    page.click("#compare-run")
    page.wait_for_function(f"document.querySelector('#compare-status').innerText.includes('Captioned {count} ')",
                           timeout=WAIT_MS)
    return page.inner_text("#compare-status")


def screenshot(page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("CAPTIONLAB_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_compare_captions_an_upload_with_every_strategy(page, tmp_path):
    image = write_png(tmp_path / "upload.png", size=(64, 48), colour=(20, 160, 40))
    upload(page, [image])
    status = caption_uploads(page)
    table = page.inner_text("#compare-table")
    for label in ("Zero-shot", "Prompt learning", "Prefix tuning", "LoRA", "DoRA", "Full fine-tuning",
                  "CLIP-Captioner"):
        assert label in table
    assert "Captioned 1 image(s) with 6 captioner(s)" in status
    assert "CLIP-Captioner checkpoint" in table  # shown with what to do, not hidden
    # weights other than the embedded ones: nothing about the embedded world
    assert "only ever seen the embedded caption world" not in page.inner_text("body")
    assert page.locator("#compare-known-examples").count() == 0
    screenshot(page, "compare", tmp_path)


def test_embedded_models_say_what_they_know_beside_an_uploads_captions(browser, served_embedded, tmp_path):
    page = open_app(browser, served_embedded)
    try:
        assert page.locator("#compare-known-examples img").count() == 2  # before any upload: what they know
        assert "only ever seen the embedded caption world" in page.inner_text("#compare-embedded-note")
        photo = write_png(tmp_path / "pagoda.png", size=(96, 64), colour=(120, 160, 200))
        upload(page, [photo])
        status = caption_uploads(page)
        assert "About pagoda.png" in status and "only ever seen the embedded caption world" in status
        assert "CLIP-S in grey, in parentheses, is not meaningful" in status
        clip_cells = page.evaluate("""(() => [...document.querySelectorAll('#compare-table [role=gridcell]')]
            .filter(cell => /^\\(\\d\\.\\d{3}\\)$/.test(cell.innerText.trim()))
            .map(cell => getComputedStyle(cell.querySelector('span') || cell).color))()""")
        assert clip_cells and all(colour == "rgb(154, 154, 154)" for colour in clip_cells)  # greyed: #9a9a9a
        screenshot(page, "compare-embedded-upload", tmp_path)
    finally:
        page.close()


def register_finished_run(home: Path, served_checkpoints: Path, model: Path, run_id: str) -> None:
    """A finished LoRA run of the served (tiny) model, its best checkpoint a copy of the served LoRA."""
    import shutil

    from captionlab.training import runs_db
    from captionlab.training.run_folder import CHECKPOINT_COMPLETE

    folder = home / "runs" / run_id
    shutil.copytree(served_checkpoints / "strategies" / "lora", folder / "best" / "artifact")
    (folder / "best" / CHECKPOINT_COMPLETE).write_text("")
    runs_db.register_run(run_id, name="my-lora", run_dir=folder, state="finished", model=str(model),
                         strategy="lora", dataset="coco", pid=None)


def test_compare_captions_with_a_run_of_the_workspace(page, served, served_checkpoints, tiny_llava_dir,  # noqa: F811
                                                      tmp_path, monkeypatch):
    _, home = served
    monkeypatch.setenv("CAPTIONLAB_HOME", str(home))
    register_finished_run(home, served_checkpoints, tiny_llava_dir, "my-lora-20261207-101500")
    page.reload()
    wait_until_ready(page)
    page.get_by_label("my-lora (run, LoRA)").check()
    upload(page, [write_png(tmp_path / "mine.png", size=(64, 48), colour=(200, 120, 40))])
    status = caption_uploads(page)
    assert "with 7 captioner(s)" in status  # the served six and the run
    assert "my-lora (run, LoRA)" in page.inner_text("#compare-table")
    screenshot(page, "compare-with-a-run", tmp_path)


def test_drilldown_shows_images_captions_and_references(page, served, tmp_path, monkeypatch):
    _, home = served
    monkeypatch.setenv("CAPTIONLAB_HOME", str(home))
    from captionlab.data.datasets import load_records
    from captionlab.evaluation import results

    records = load_records("coco", split="test")[:3]
    predictions = tmp_path / "eval" / "predictions.jsonl"
    predictions.parent.mkdir()
    predictions.write_text("".join(json.dumps({"image_id": r.image_id, "caption": f"drilled caption {i}",
                                               "references": list(r.references)}) + "\n"
                                   for i, r in enumerate(records)))
    results.record_result(model="drill-model", strategy="lora", dataset="coco", split="test",
                          metrics={"CIDEr": 12.5}, n_images=3, predictions_path=predictions)
    open_tab(page, "Benchmarks")
    page.get_by_role("button", name="Reload results").click()
    page.wait_for_function("document.querySelector('#bench-table').innerText.includes('drill-model')",
                           timeout=WAIT_MS)
    page.locator("#bench-table [role=gridcell]").filter(has_text="drill-model").first.click()
    page.wait_for_function("document.querySelectorAll('#bench-drill img.drill-thumb').length === 3",
                           timeout=WAIT_MS)
    drill = page.inner_text("#bench-drill")
    assert "drilled caption 0" in drill and all(ref in drill for ref in records[0].references)
    screenshot(page, "benchmarks-drilldown", tmp_path)


def test_compare_tells_apart_uploads_that_share_a_name(page, tmp_path):
    for folder, colour in (("a", (200, 30, 30)), ("b", (30, 30, 200))):
        (tmp_path / folder).mkdir()
        write_png(tmp_path / folder / "normal.png", size=(64, 48), colour=colour)
    upload(page, [tmp_path / "a" / "normal.png", tmp_path / "b" / "normal.png"])
    page.wait_for_function("document.querySelector('#compare-upload').innerText.split('.png').length > 2",
                           timeout=WAIT_MS)  # both files listed (gradio breaks each name before its extension)
    page.click("#compare-run")
    page.wait_for_function("document.querySelector('#compare-status').innerText.includes('Captioned 2 image')",
                           timeout=WAIT_MS)
    table = page.inner_text("#compare-table")
    assert "normal.png (2)" in table and "ms per image (batch mean)" in table
    screenshot(page, "compare-same-names", tmp_path)


def test_compare_rejects_a_file_that_is_not_an_image(page, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    page.locator("#compare-upload input[type=file]").set_input_files(str(bad))
    page.wait_for_selector("#compare-upload :text('notes.txt')", timeout=WAIT_MS)
    page.click("#compare-run")
    page.wait_for_function("document.querySelector('#compare-status').innerText.includes('not an image')",
                           timeout=WAIT_MS)
    assert "Traceback" not in page.content()


def test_benchmarks_draw_plotly_charts(page, tmp_path):
    open_tab(page, "Benchmarks")
    page.wait_for_selector("#bench-fig2 .js-plotly-plot .main-svg", timeout=WAIT_MS)
    page.wait_for_selector("#bench-tradeoff .js-plotly-plot .main-svg", timeout=WAIT_MS)
    # plotly draws the bars after the svg's frame: wait for them rather than count at once
    page.wait_for_function("document.querySelectorAll('#bench-fig2 .js-plotly-plot .bars path').length > 10",
                           timeout=WAIT_MS)
    assert "111.4" in page.inner_text("#bench-table")  # Table 1: LLaVA-v1.5-7B full fine-tuning CIDEr
    screenshot(page, "benchmarks", tmp_path)


def progress_step(page) -> tuple[int, str]:
    element = page.locator("#train-progress")
    if element.count() == 0:
        return -1, ""
    return int(element.get_attribute("data-step") or 0), element.get_attribute("data-state") or ""


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_training_from_the_form_advances_and_survives_a_reload(page, served, tmp_path):
    url, home = served
    open_tab(page, "Train")
    for field, value in (("batch-size", "2"), ("micro-batch-size", "2"), ("epochs", "1"),
                         ("max-train-images", "12"), ("max-val-images", "4")):
        box = page.locator(f"#train-{field} input, #train-{field} textarea").first
        box.fill(value)
        box.press("Tab")
    page.fill("#train-name input, #train-name textarea", "browser-test")
    page.click("#train-launch")
    page.wait_for_function("document.querySelector('#train-message').innerText.includes('Started')",
                           timeout=WAIT_MS)
    run_id = re.search(r"Started (\S+)", page.inner_text("#train-message")).group(1)
    assert run_id.startswith("browser-test")
    assert "epochs=1" in page.input_value("#train-command textarea")

    first = wait_for(lambda: progress_step(page)[0] >= 1 and progress_step(page), 240, "the first optimizer step")
    screenshot(page, "train-running", tmp_path)
    wait_for(lambda: progress_step(page)[0] > first[0] or progress_step(page)[1] == "finished", 240,
             "the run to advance past its first step")
    wait_for(lambda: "kWh" in page.inner_text("#train-stats") if page.locator("#train-stats").count() else False,
             60, "the energy so far")

    page.reload()
    page.wait_for_selector("#compare-gallery", timeout=WAIT_MS)
    open_tab(page, "Train")
    wait_for(lambda: run_id in page.inner_text("#train-runs"), 60, "the run in the list after a reload")
    wait_for(lambda: run_id in (page.locator("#train-progress").inner_text()
                                if page.locator("#train-progress").count() else ""),
             60, "the run's progress after a reload")
    assert progress_step(page)[0] >= first[0]
    page.wait_for_selector("#train-curves .js-plotly-plot", timeout=WAIT_MS)
    screenshot(page, "train-after-reload", tmp_path)


def test_train_form_refuses_a_fraction_in_a_whole_number_field(page, tmp_path):
    open_tab(page, "Train")
    box = page.locator("#train-epochs input").first
    box.fill("1.5")
    box.press("Tab")
    page.get_by_role("button", name="Preview command").click()
    page.wait_for_function("document.querySelector('#train-message').innerText.includes('whole number')",
                           timeout=WAIT_MS)
    assert "epochs: 1.5 must be a whole number" in page.inner_text("#train-message")
    assert page.input_value("#train-command textarea") == ""  # no command with epochs=2 behind the user's back


def register_run_with_a_long_log(home: Path, run_id: str) -> str:
    """A stopped run whose log is longer than the Train tab's log box; returns its last line."""
    from captionlab.training import runs_db
    from captionlab.training.run_folder import RunFolder

    folder = RunFolder(home / "runs" / run_id)
    folder.path.mkdir(parents=True)
    folder.write_status(state="stopped", step=3, total_steps=6)
    newest = "stop requested: checkpointed at step 3 (the newest line)"
    folder.log_path.write_text("".join(f"step {i}: loss {4 - i / 20:.2f}\n" for i in range(1, 40)) + newest + "\n")
    runs_db.register_run(run_id, name=run_id, run_dir=folder.path, state="stopped", model="embedded",
                         strategy="lora", dataset="coco", pid=None)
    return newest


def test_train_log_opens_at_its_newest_line(page, served, monkeypatch):
    _, home = served
    monkeypatch.setenv("CAPTIONLAB_HOME", str(home))
    newest = register_run_with_a_long_log(home, "long-log")
    open_tab(page, "Train")
    page.fill("#train-run-id input, #train-run-id textarea", "long-log")
    page.wait_for_function(f"document.querySelector('#train-log textarea').value.endsWith({newest!r})",
                           timeout=WAIT_MS)
    wait_for(lambda: log_shows_its_end(page), 10, "the log scrolled to its newest line")


def log_shows_its_end(page) -> bool:
    top, height, full = page.evaluate("(() => {const box = document.querySelector('#train-log textarea'); "
                                      "return [box.scrollTop, box.clientHeight, box.scrollHeight]})()")
    return full > height and top + height >= full - 2  # the log overflows the box, and its end is in view


def test_arena_votes_reveal_the_names_and_update_the_ratings(page, served, tmp_path):
    open_tab(page, "Arena")
    page.locator("#arena-gallery img").first.click()
    page.wait_for_function("document.querySelector('#arena-status').innerText.includes('Which caption')",
                           timeout=WAIT_MS)
    assert page.input_value("#arena-left textarea").strip() and page.input_value("#arena-right textarea").strip()
    assert "hidden" in page.inner_text("#arena-reveal")  # names are not shown before the vote
    page.click("#arena-vote-left")
    page.wait_for_function("document.querySelector('#arena-reveal').innerText.includes('Left was')",
                           timeout=WAIT_MS)
    revealed = page.inner_text("#arena-reveal")
    labels = ("Zero-shot", "Prompt learning", "Prefix tuning", "LoRA", "DoRA", "Full fine-tuning")
    assert sum(label in revealed for label in labels) == 2
    # another pair on the same image (captions reused), another vote; the leaderboard lists who was voted on
    page.click("#arena-next")
    page.wait_for_function("document.querySelector('#arena-status').innerText.includes('Which caption')",
                           timeout=WAIT_MS)
    assert "hidden" in page.inner_text("#arena-reveal")
    page.click("#arena-vote-tie")
    page.wait_for_function("document.querySelector('#arena-reveal').innerText.includes('Left was')",
                           timeout=WAIT_MS)
    page.wait_for_function("document.querySelector('#arena-method').innerText.includes('2 vote(s)')",
                           timeout=WAIT_MS)
    board = page.inner_text("#arena-board")
    assert sum(label in board for label in labels) >= 2 and "to" in board  # ratings with their intervals
    page.wait_for_selector("#arena-winrates .js-plotly-plot .main-svg", timeout=WAIT_MS)
    screenshot(page, "arena", tmp_path)
    from captionlab.arena.votes import list_votes

    votes = list_votes(db_path=served[1] / "captionlab.db")[-2:]  # stored with this browser's own id
    assert [v.outcome for v in votes] == ["left", "tie"]
    voter = votes[0].voter
    assert votes[1].voter == voter and voter.startswith("browser:") and "unknown" not in voter


def train_form_run(page, name: str, epochs: int) -> str:
    """Launch a small run from the Train form; returns its id once the form says it started."""
    open_tab(page, "Train")
    for field, value in (("batch-size", "2"), ("micro-batch-size", "2"), ("epochs", str(epochs)),
                         ("max-train-images", "12"), ("max-val-images", "4")):
        box = page.locator(f"#train-{field} input, #train-{field} textarea").first
        box.fill(value)
        box.press("Tab")
    page.fill("#train-name input, #train-name textarea", name)
    page.click("#train-launch")
    page.wait_for_function("document.querySelector('#train-message').innerText.includes('Started')",
                           timeout=WAIT_MS)
    return re.search(r"Started (\S+)", page.inner_text("#train-message")).group(1)


def test_train_stop_and_resume_buttons_stop_and_continue_a_run(page, served, tmp_path):
    """Issue 26: the Train tab's Stop and Resume, clicked on a real run: Stop checkpoints it and says stopped;
    Resume continues from that step (not from 0) with one trainer, to the end."""
    _, home = served
    run_id = train_form_run(page, "stop-resume", epochs=4)  # 6 steps an epoch: long enough to stop midway
    wait_for(lambda: progress_step(page)[0] >= 2 and progress_step(page)[1] == "running", 300,
             "the run's second optimizer step")
    page.click("#train-stop")
    wait_for(lambda: f"{run_id}: stopped" in page.inner_text("#train-message"), 120, "Stop's answer")
    wait_for(lambda: progress_step(page)[1] == "stopped", 60, "the progress bar to say stopped")
    stopped_at = progress_step(page)[0]
    assert stopped_at < 24 and "stopped" in page.inner_text("#train-runs")
    assert "stop requested: checkpointed at step" in (home / "runs" / run_id / "log.txt").read_text()
    screenshot(page, "train-stopped", tmp_path)
    wait_for(lambda: page.locator("#train-resume").is_enabled(), 30, "Resume to be offered")
    page.click("#train-resume")
    wait_for(lambda: "resumed" in page.inner_text("#train-message") or "Error" in page.inner_text("#train-message"),
             120, "Resume's answer")
    assert f"run {run_id} resumed" in page.inner_text("#train-message"), page.inner_text("#train-message")
    # a quiet machine can finish the resumed run between two of the page's progress refreshes
    wait_for(lambda: progress_step(page)[1] in ("running", "finished") and progress_step(page)[0] >= stopped_at,
             300, "the resumed run running again")
    assert progress_step(page)[0] >= stopped_at  # continued from its checkpoint, not from step 0
    wait_for(lambda: progress_step(page)[0] > stopped_at or progress_step(page)[1] == "finished", 300,
             "the resumed run to advance")
    log = (home / "runs" / run_id / "log.txt").read_text()
    assert log.count("[launcher") == 2  # the launch and one resume: one trainer at a time
    if progress_step(page)[1] == "running":  # leave nothing training for the next test
        page.click("#train-stop", timeout=10_000)
        wait_for(lambda: progress_step(page)[1] in ("stopped", "finished"), 120, "the run to stop again")


def test_an_evaluation_job_finishes_and_its_results_appear_without_a_refresh(page, served, tmp_path):
    """Issue 26.7: a job started from the Benchmarks tab moves queued/running -> finished in the jobs table and
    its scores appear in the results table, with no Refresh or Reload click; its state uses the runs' words."""
    open_tab(page, "Benchmarks")
    page.wait_for_selector("#bench-table", timeout=WAIT_MS)
    assert "first 2 images" not in page.inner_text("#bench-table")
    page.get_by_text("Run an evaluation").click()
    box = page.locator("#bench-eval-limit input, #bench-eval-limit textarea").first
    box.fill("2")
    box.press("Tab")
    page.get_by_role("button", name="Start evaluation job").click()
    wait_for(lambda: "eval-zero_shot-coco" in page.inner_text("#bench-jobs"), 60, "the job in the jobs table")
    screenshot(page, "benchmarks-job-running", tmp_path)
    wait_for(lambda: "finished" in page.inner_text("#bench-jobs") or "failed" in page.inner_text("#bench-jobs"),
             400, "the job to end")
    jobs_text = page.inner_text("#bench-jobs")
    assert "finished" in jobs_text and "exited" not in jobs_text, jobs_text
    assert "2/2 images" in jobs_text
    wait_for(lambda: "first 2 images" in page.inner_text("#bench-table"), 30, "the job's scores in the table")
    screenshot(page, "benchmarks-job-finished", tmp_path)
