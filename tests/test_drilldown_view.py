"""The Benchmarks drill-down shows each image (a thumbnail), its caption, its scores and all its references."""

from __future__ import annotations

from html import escape


def test_drilldown_shows_thumbnails_captions_and_every_reference(tmp_path, monkeypatch, tiny_world):
    from captionlab import paths
    from captionlab.data.datasets import load_records
    from captionlab.ui.benchmarks_tab import drill_html

    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    paths.world_dir().parent.mkdir(parents=True, exist_ok=True)
    paths.world_dir().symlink_to(tiny_world.parent)  # the session's small world as this workspace's

    record = load_records("coco", split="test")[0]
    references = list(record.references)
    records = [{"image": record.image_id, "caption": "a <b>bold</b> caption", "CIDEr (image)": 12.3456,
                "references": references}]
    html, note = drill_html(records, "coco", "test")
    assert note == "" and html.count('<img src="data:image/jpeg;base64,') == 1
    assert "a &lt;b&gt;bold&lt;/b&gt; caption" in html and "12.346" in html  # escaped, three decimals
    assert len(references) > 2 and all(f"<li>{escape(r)}</li>" in html for r in references)


def test_drilldown_without_the_dataset_says_why_there_are_no_images(tmp_path, monkeypatch):
    from captionlab.ui.benchmarks_tab import drill_html

    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "empty-home"))
    html, note = drill_html([{"image": "7", "caption": "a red ball", "references": ["a ball"]}], "coco", "test")
    assert "<img" not in html and "a red ball" in html and "<li>a ball</li>" in html
    assert "embedded world is not on this machine" in note and "captionlab data world" in note
