"""Which CLIP tower to use, validated without importing torch or open_clip.

Config modules import :class:`ClipSpec` from here, so a misspelt key or an
unknown model name is reported in well under a second; importing open_clip
(and torch) takes several. Loading the tower is
:func:`graft.models.clip_tower.load_clip`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator

from graft.config import StrictModel

# graft's own tiny architectures, registered with open_clip when graft.models.clip_tower is imported.
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"


@lru_cache(maxsize=1)
def _registered_config_files() -> frozenset[str]:
    """Model names open_clip registers from its bundled JSON configs plus graft's, found without importing it.

    open_clip registers every ``model_configs/*.json`` holding ``embed_dim``, ``vision_cfg`` and
    ``text_cfg`` under its file stem; this reads the same files.
    """
    folders = [MODEL_CONFIG_DIR]
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        folders.append(Path(next(iter(spec.submodule_search_locations))) / "model_configs")
    names = set()
    for folder in folders:
        for f in folder.glob("*.json"):
            try:
                cfg = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
                names.add(f.stem)
    return frozenset(names)


def known_model_names() -> set[str]:
    """open_clip's registered model names (its live registry when open_clip is already imported)."""
    names = set(_registered_config_files())
    if "open_clip" in sys.modules:
        names.update(sys.modules["open_clip"].list_models())
    return names


class ClipSpec(StrictModel):
    """Which CLIP tower to use. Defaults follow the paper: ViT-B/16 (QuickGELU), OpenAI weights."""

    model: str = Field("ViT-B-16-quickgelu", description="open_clip model name, or local-dir:DIR / hf-hub:org/repo")
    pretrained: str | None = Field(
        "openai", description="pretrained tag of the model, or a local weights file; None for local-dir:/hf-hub:")
    precision: str = Field("fp32", description="open_clip precision: fp32, fp16, bf16, amp ...")

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if v.startswith(("local-dir:", "hf-hub:")):
            if v.startswith("local-dir:") and not (Path(v[len("local-dir:"):]) / "open_clip_config.json").is_file():
                raise ValueError(f"{v}: folder has no open_clip_config.json")
            return v
        if v.replace("/", "-") not in known_model_names():
            raise ValueError(f"unknown open_clip model {v!r}; see open_clip.list_models() or use local-dir:/hf-hub:")
        return v

    def fingerprint(self) -> str:
        """Identifies the weights: changes whenever the model or its weights file changes."""
        h = hashlib.sha256(f"{self.model}|{self.pretrained}".encode())
        p = Path(self.pretrained) if self.pretrained else None
        if p is not None and p.is_file():
            st = p.stat()
            h.update(f"{st.st_size}|{int(st.st_mtime)}".encode())
        elif self.model.startswith("local-dir:"):
            for f in sorted(Path(self.model[len("local-dir:"):]).glob("*")):
                if f.is_file():
                    st = f.stat()
                    h.update(f"{f.name}|{st.st_size}|{int(st.st_mtime)}".encode())
        return h.hexdigest()[:16]

    def weights_record(self) -> dict[str, str | None]:
        """The part of :func:`graft.models.clip_tower.spec_record` known without loading the tower."""
        return {"model": self.model, "pretrained": self.pretrained, "fingerprint": self.fingerprint()}
