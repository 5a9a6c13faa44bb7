"""Missing data is fetched once, md5-checked, and moved into place; a bad archive stops the run."""

import functools
import hashlib
import http.server
import tarfile
import threading

import pytest

from batchscale import Config, data, train
from batchscale.errors import ConfigError


@pytest.fixture
def archive(tiny_cifar, tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tiny_cifar / data.FOLDER, arcname=data.FOLDER)
    return path


@pytest.fixture
def served(tmp_path):
    """An HTTP server on loopback serving tmp_path: the download code runs as it would against the real site."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def config(root, tmp_path, **kw) -> Config:
    return Config(train_dir=str(root), val_dir=str(root), log_dir=str(tmp_path / "logs"), epochs=1, batch_size=64,
                  width=4, no_cuda=True, progress=False, **kw)


def test_missing_data_is_downloaded_verified_and_trained_on(archive, served, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "ARCHIVE_URL", f"{served}/{archive.name}")
    monkeypatch.setattr(data, "ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    root = tmp_path / "fresh"
    summary = train(config(root, tmp_path))
    assert data.has_split(root, True) and data.has_split(root, False)
    assert summary["epochs_completed"] == 1
    assert [p.name for p in root.iterdir()] == [data.FOLDER]  # no archive or temporary folder left behind


def test_archive_with_wrong_md5_is_refused(archive, served, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "ARCHIVE_URL", f"{served}/{archive.name}")
    monkeypatch.setattr(data, "ARCHIVE_MD5", "0" * 32)
    root = tmp_path / "fresh"
    with pytest.raises(ConfigError, match="the download failed") as err:
        train(config(root, tmp_path))
    assert "--train-dir" in str(err.value)
    assert not (root / data.FOLDER).exists()


def test_unreachable_source_names_layout_and_flag(served, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "ARCHIVE_URL", f"{served}/no-such-archive.tar.gz")
    with pytest.raises(ConfigError, match=r"cifar-10-batches-py.*point --train-dir"):
        train(config(tmp_path / "fresh", tmp_path))
