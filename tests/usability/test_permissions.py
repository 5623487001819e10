"""Why: every output was readable by its owner only (mkstemp/mkdtemp give 0600/0700).

Manifests, shards, checkpoints and exports now get the umask's permissions (0644 files, 0755
folders under the usual 022), so a lab-mate can read a shared dataset or model. A file holding a
secret can still ask for 0600.
"""

from __future__ import annotations

import os
import stat

import pytest

from graft.dataset.shards import write_samples
from graft.models.checkpoint import save_checkpoint
from graft.storage import atomic_dir, atomic_write_bytes, atomic_write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_outputs_get_the_umask_permissions(tmp_path, umask_022):
    atomic_write_json(tmp_path / "stats.json", {"a": 1})
    assert _mode(tmp_path / "stats.json") == 0o644
    write_samples(tmp_path / "tiles-00000.tar", iter([{"__key__": "t1", "json": b"{}"}]))
    assert _mode(tmp_path / "tiles-00000.tar") == 0o644
    with atomic_dir(tmp_path / "export") as tmp:
        (tmp / "open_clip_config.json").write_text("{}")
    assert _mode(tmp_path / "export") == 0o755 and _mode(tmp_path / "export" / "open_clip_config.json") == 0o644
    ckpt = save_checkpoint(tmp_path / "run", 1, {}, {}, {"kind": "image"}, "")
    assert _mode(ckpt) == 0o755
    assert {f.name: _mode(f) for f in ckpt.iterdir()} == dict.fromkeys(
        ["model.safetensors", "trainer.pt", "config.yaml", "meta.json"], 0o644)
    # A stricter umask is honoured, and a secret stays private.
    os.umask(0o077)
    atomic_write_bytes(tmp_path / "private-by-umask", b"x")
    assert _mode(tmp_path / "private-by-umask") == 0o600
    os.umask(0o022)
    atomic_write_bytes(tmp_path / "token", b"secret", private=True)
    assert _mode(tmp_path / "token") == 0o600
