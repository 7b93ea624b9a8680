"""`data fetch`, offline: a local HTTP server on 127.0.0.1 serves small files in each benchmark's real layout.

The source table (captionlab/data/sources.py) is rebased onto the local server, keeping each URL's path; the
nocaps and CC3M annotations list image URLs on the same server, so the per-image downloads are real too. A guard
refuses any connection to a host other than 127.0.0.1. The server is a daemon thread, shut down after each test
and, whatever happens, by a timer.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image

from captionlab.cli import main
from captionlab.data import fetch as fetch_module
from captionlab.data.datasets import load_config
from captionlab.data.download import DownloadError, download
from captionlab.data.sources import SOURCES

SERVER_LIFETIME_S = 60


class FileServer:
    """Serves `files` (URL path -> bytes) with Range support; each path in `drop_once` is cut off mid-body once."""

    def __init__(self, files: dict[str, bytes], drop_once: tuple[str, ...] = ()) -> None:
        self.files, self.drop_once, self.requests = files, set(drop_once), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                server.requests.append((path, self.headers.get("Range")))
                body = server.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                start = int(re.match(r"bytes=(\d+)-", self.headers["Range"]).group(1)) if self.headers["Range"] else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if path in server.drop_once:
                    server.drop_once.discard(path)
                    self.wfile.write(body[start:start + (len(body) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.stopper = threading.Timer(SERVER_LIFETIME_S, self.httpd.shutdown)

    def __enter__(self) -> "FileServer":
        self.thread.start()
        self.stopper.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopper.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str) -> str:
        return self.base + path

    def fetched(self, path: str) -> list:
        return [header for requested, header in self.requests if requested == path]


@pytest.fixture
def local_only(monkeypatch):
    """Refuse any connection to a host other than 127.0.0.1 (the tests must never reach the real sources)."""
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        if address[0] not in ("127.0.0.1", "localhost"):
            raise OSError(f"the test forbids connecting to {address}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def _published_files(base: str) -> dict[str, bytes]:
    """Every file the five sources publish, small, at its real URL path, in its real layout."""
    red, blue, green = _jpeg((200, 0, 0)), _jpeg((0, 0, 200)), _jpeg((0, 200, 0))
    karpathy = {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "imgid": 0, "cocoid": 391895,
         "split": "test", "sentences": [{"raw": "A man riding a moped."}, {"raw": "A person on a small bike."}]},
        {"filepath": "train2014", "filename": "COCO_train2014_000000000009.jpg", "imgid": 1, "cocoid": 9,
         "split": "train", "sentences": [{"raw": "A plate of food."}]},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "imgid": 2, "cocoid": 42,
         "split": "restval", "sentences": [{"raw": "An image the zip does not hold."}]}]}
    nocaps = {"images": [
        {"id": 0, "file_name": "0013ea2087020901.jpg", "domain": "in-domain",
         "coco_url": f"{base}/nocaps/val/0013ea2087020901.jpg"},
        {"id": 1, "file_name": "00223d6c2ef9e5e7.jpg", "domain": "out-domain",
         "coco_url": f"{base}/nocaps/val/00223d6c2ef9e5e7.jpg"},
        {"id": 2, "file_name": "0042bd8a9a5e7c85.jpg", "domain": "near-domain",
         "coco_url": f"{base}/nocaps/val/gone.jpg"}],
        "annotations": [{"image_id": i, "id": i, "caption": f"caption {i}"} for i in range(3)]}
    vizwiz_val = {"images": [{"file_name": "VizWiz_val_00000000.jpg", "id": 23431}],
                  "annotations": [{"image_id": 23431, "id": 1, "caption": "A can of soda on a counter.",
                                   "is_rejected": False, "is_precanned": False}]}
    textcaps = {"dataset_type": "val", "data": [
        {"image_id": "011e7e629fb9ae7b", "image_path": "train/011e7e629fb9ae7b.jpg", "set_name": "val",
         "caption_str": "A bus that says Metro.", "reference_strs": ["A bus that says Metro.", "A yellow bus."]}]}
    cc3m_tsv = (f"a very typical bus station\t{base}/cc3m/bus-station.jpg\n"
                f"a dead link\t{base}/cc3m/missing.jpg\n"
                f"sierra looked stunning\t{base}/cc3m/image.jpg?size=large\n")
    return {
        "/people/karpathy/deepimagesent/caption_datasets.zip": _zip({
            "dataset_coco.json": json.dumps(karpathy).encode(), "dataset_flickr8k.json": b"{}"}),
        "/zips/val2014.zip": _zip({"val2014/COCO_val2014_000000391895.jpg": red}),
        "/zips/train2014.zip": _zip({"train2014/COCO_train2014_000000000009.jpg": blue}),
        "/nocaps_val_4500_captions.json": json.dumps(nocaps).encode(),
        "/nocaps/val/0013ea2087020901.jpg": red, "/nocaps/val/00223d6c2ef9e5e7.jpg": green,
        "/VizWiz_final/caption/annotations.zip": _zip({
            "annotations/train.json": b"{}", "annotations/val.json": json.dumps(vizwiz_val).encode()}),
        "/VizWiz_final/images/val.zip": _zip({"val/VizWiz_val_00000000.jpg": blue}),
        "/textvqa/data/textcaps/TextCaps_0.1_val.json": json.dumps(textcaps).encode(),
        "/textvqa/images/train_val_images.zip": _zip({"train_images/011e7e629fb9ae7b.jpg": green}),
        "/gcc-data/Validation/GCC-1.1.0-Validation.tsv": cc3m_tsv.encode(),
        "/cc3m/bus-station.jpg": red, "/cc3m/image.jpg": blue,
    }


def _rebased_sources(base: str, served: dict[str, bytes]) -> dict:
    """The real source table, each URL moved onto the local server with its path kept.

    Sizes become those of the served files, so the disk-space check sizes this fixture and not the ~50 GB of the
    real sources (a CI machine with less free disk than that refused the fetch before it started).
    """
    def rebase(file):
        path = urlsplit(file.url).path
        return dataclasses.replace(file, url=base + path, approx_bytes=len(served.get(path, b"")))

    return {name: dataclasses.replace(b, files=tuple(map(rebase, b.files)), per_image_approx_bytes=10_000)
            for name, b in SOURCES.items()}


@pytest.fixture
def published(local_only, monkeypatch):
    """A local server with every source's files, and the source table pointing at it."""
    server = FileServer({}, drop_once=("/zips/val2014.zip",))
    server.files.update(_published_files(server.base))
    monkeypatch.setattr(fetch_module, "SOURCES", _rebased_sources(server.base, server.files))
    with server:
        yield server


def test_fetch_all_writes_a_datasets_yaml_the_readers_read_back(published, tmp_path, capsys):
    code = main(["data", "fetch", "--all", "--root", str(tmp_path), "--quiet", "--workers", "2"])
    output = capsys.readouterr().out
    assert code == 0, output
    assert "coco: restval 0 images / 0 captions" not in output  # a split whose only image is missing is no split
    assert "coco: test 1 images / 2 captions, train 1 images / 1 captions; 1 missing image(s)" in output
    assert "nocaps: val 2 images / 2 captions; 1 missing image(s) (1 image URL(s) failed)" in output
    assert "cc3m: val 2 images / 2 captions; 1 missing image(s) (1 image URL(s) failed)" in output
    assert "vizwiz: val 1 images / 1 captions; 0 missing image(s)" in output
    assert "textcaps: val 1 images / 2 captions; 0 missing image(s)" in output

    specs = load_config(tmp_path / "datasets.yaml")
    assert sorted(specs) == ["cc3m", "coco", "nocaps", "textcaps", "vizwiz"]
    assert specs["coco"].split == "test"
    assert specs["coco"].annotations == tmp_path / "coco/annotations/dataset_coco.json"
    assert not list(tmp_path.rglob("*.zip")) and not list(tmp_path.rglob("*.part"))  # unpacked, then removed
    sidecar = json.loads((tmp_path / "cc3m/images/00000/000000001.json").read_text())
    assert sidecar["status"] == "failed_to_download" and sidecar["caption"] == "a dead link"

    for name, images in [("coco", 1), ("nocaps", 2), ("cc3m", 2), ("vizwiz", 1), ("textcaps", 1)]:
        assert main(["data", "stats", "--dataset", name, "--config", str(tmp_path / "datasets.yaml"),
                     "--skip-missing", "--json"]) == 0
        stats = json.loads(capsys.readouterr().out)
        assert stats["total"]["images"] == images, name
    assert main(["data", "stats", "--dataset", "cc3m", "--config", str(tmp_path / "datasets.yaml"), "--json",
                 "--skip-missing"]) == 0
    cc3m = json.loads(capsys.readouterr().out)
    assert cc3m["total"]["captions"] == 2 and cc3m["missing_images_skipped"] == 1


def test_an_interrupted_download_resumes_where_it_stopped(published, tmp_path):
    assert main(["data", "fetch", "coco", "--root", str(tmp_path), "--quiet"]) == 0
    tries = published.fetched("/zips/val2014.zip")
    assert len(tries) == 2 and tries[0] is None and re.fullmatch(r"bytes=\d+-", tries[1]), tries
    assert int(tries[1][6:-1]) > 0  # the second try asked only for the rest
    assert (tmp_path / "coco/images/val2014/COCO_val2014_000000391895.jpg").read_bytes() == _jpeg((200, 0, 0))


def test_a_rerun_fetches_nothing_already_there(published, tmp_path):
    assert main(["data", "fetch", "coco", "vizwiz", "--root", str(tmp_path), "--quiet"]) == 0
    before = len(published.requests)
    assert main(["data", "fetch", "coco", "vizwiz", "--root", str(tmp_path), "--quiet"]) == 0
    assert len(published.requests) == before


def test_a_checksum_mismatch_is_refused_and_nothing_is_kept(local_only, tmp_path):
    with FileServer({"/file.bin": b"x" * 5000}) as server:
        with pytest.raises(DownloadError, match="refused: SHA-256"):
            download(server.url("/file.bin"), tmp_path / "file.bin", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_short_file_is_refused_after_the_retries(local_only, tmp_path):
    with FileServer({"/file.bin": b"y" * 4000}, drop_once=("/file.bin",)) as server:
        with pytest.raises(DownloadError, match="gave up after 1 tries"):
            download(server.url("/file.bin"), tmp_path / "file.bin", retries=0, progress=False)
        assert (tmp_path / "file.bin.part").stat().st_size == 2000  # kept, for the next run to resume
        assert download(server.url("/file.bin"), tmp_path / "file.bin", progress=False).read_bytes() == b"y" * 4000
        assert server.fetched("/file.bin")[-1] == "bytes=2000-"


def test_not_enough_disk_space_stops_before_any_download(published, tmp_path, monkeypatch, capsys):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 10**3, 10**3))
    assert main(["data", "fetch", "--all", "--root", str(tmp_path), "--quiet"]) == 2
    assert "not enough disk space" in capsys.readouterr().err
    assert published.requests == []


def test_a_missing_source_file_is_reported_and_the_others_still_arrive(published, tmp_path, capsys):
    del published.files["/textvqa/data/textcaps/TextCaps_0.1_val.json"]
    assert main(["data", "fetch", "textcaps", "vizwiz", "--root", str(tmp_path), "--quiet"]) == 1
    output = capsys.readouterr().out
    assert "textcaps: not fetched:" in output and "HTTP 404" in output
    assert "download it by hand from https://textvqa.org/textcaps/dataset/" in output
    assert sorted(load_config(tmp_path / "datasets.yaml")) == ["vizwiz"]


def test_a_dead_owner_link_falls_back_to_its_mirror_named_as_such(published, tmp_path, monkeypatch, capsys):
    sources = fetch_module.SOURCES
    textcaps = sources["textcaps"]
    annotations = dataclasses.replace(textcaps.files[0], url=published.url("/dead/TextCaps_0.1_val.json"),
                                      mirrors=(textcaps.files[0].url,))
    sources = {**sources, "textcaps": dataclasses.replace(textcaps, files=(annotations, textcaps.files[1]))}
    monkeypatch.setattr(fetch_module, "SOURCES", sources)
    assert main(["data", "fetch", "textcaps", "--root", str(tmp_path), "--quiet"]) == 0
    assert "a mirror of the owner's" in capsys.readouterr().err
    assert published.fetched("/dead/TextCaps_0.1_val.json") == [None]
    assert "textcaps" in load_config(tmp_path / "datasets.yaml")


def test_the_progress_bars_reach_the_end(published, tmp_path, capsys):
    assert main(["data", "fetch", "nocaps", "vizwiz", "--root", str(tmp_path)]) == 0
    bars = capsys.readouterr().err
    assert "vizwiz/val.zip [##############################] 100.0%" in bars
    assert "nocaps images [##############################] 100.0% 3 images/3 images" in bars  # 1 of them failed


def test_list_prints_every_source_and_fetches_nothing(capsys, no_network):
    assert main(["data", "fetch", "--list"]) == 0
    listing = capsys.readouterr().out
    for benchmark in SOURCES.values():
        assert all(file.url in listing for file in benchmark.files)
    assert no_network == []


def test_names_and_all_are_exclusive(capsys):
    assert main(["data", "fetch", "coco"]) == 2  # no --root
    assert main(["data", "fetch", "coco", "--all", "--root", "x"]) == 2
    assert main(["data", "fetch", "--root", "x"]) == 2
    assert main(["data", "fetch", "imagenet", "--root", "x"]) == 2
