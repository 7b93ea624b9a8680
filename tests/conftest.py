"""Shared fixtures: tiny randomly initialised LLaVA / LLaVA-NeXT models of the real classes, in HF format."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never touch the user's workspace or Hugging Face cache (a cached llava-1.5-7b would turn the tests of its
# "not downloaded" message): both point at folders of this test session, which tests may narrow further.
_SESSION = tempfile.mkdtemp(prefix="captionlab-tests-")
atexit.register(shutil.rmtree, _SESSION, ignore_errors=True)
os.environ["CAPTIONLAB_HOME"] = os.path.join(_SESSION, "home")
os.environ["HF_HUB_CACHE"] = os.path.join(_SESSION, "hf-cache")
warnings.filterwarnings("ignore", category=FutureWarning)

from captionlab.models.tiny import TINY_TEXTS  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from captionlab.models.tokenizer import train_tokenizer

    return train_tokenizer(TINY_TEXTS, vocab_size=320)


def _tiny_model_dir(tmp_path_factory, tokenizer, architecture):
    from captionlab.models.tiny import save_tiny_llava

    return save_tiny_llava(tmp_path_factory.mktemp(architecture), tokenizer, architecture=architecture, seed=0)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory, tiny_tokenizer):
    return _tiny_model_dir(tmp_path_factory, tiny_tokenizer, "llava")


@pytest.fixture(scope="session")
def tiny_llava_next_dir(tmp_path_factory, tiny_tokenizer):
    return _tiny_model_dir(tmp_path_factory, tiny_tokenizer, "llava_next")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh workspace (CAPTIONLAB_HOME) for one test; test files that need more of it override this."""
    monkeypatch.setenv("CAPTIONLAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def tiny_images():
    from PIL import Image

    return [Image.new("RGB", (48, 32), (200, 30, 30)), Image.new("RGB", (32, 64), (20, 40, 220)),
            Image.new("RGB", (32, 32), (10, 200, 10))]


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A small embedded world (all five domains, real formats); returns its datasets.yaml."""
    from captionlab.world import write_world

    return write_world(tmp_path_factory.mktemp("world"), seed=0, scale=0.02)


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection, recorded and refused at once: a test asserts the list stays empty (the
    code knew it was offline) instead of timing a call, which a loaded machine makes slow for other reasons."""
    import socket

    attempts: list = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"the test forbids network access (tried {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    return attempts


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the caller binds it soon after; a clash then is retried where it matters)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
