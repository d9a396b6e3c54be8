"""Fingerprints: what produced a result, so that a result is reused only for exactly the inputs
that made it (settings, data, backbone files, code and hardware)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .config import NOT_IN_FINGERPRINT, RunConfig, TimingConfig
from .device import device_name, resolve_device
from .paths import BUNDLED_BACKBONE, PACKAGE_DIR


def digest(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def code_version() -> str:
    """A hash of every module of the helpers, ``bundled/`` and ``tools/`` included: a result
    made by other code is not reused."""
    sources = sorted(PACKAGE_DIR.rglob("*.py"))
    return digest(b"".join(p.relative_to(PACKAGE_DIR).as_posix().encode() + p.read_bytes()
                           for p in sources))[:16]


def file_stamp(path: str | Path, content: bool = False) -> list:
    """A file's identity: size and modification time, or (``content=True``) a hash of its
    bytes, which also catches a file rewritten with its size and time restored."""
    path = Path(path)
    if content:
        return [str(path), digest(path.read_bytes())]
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def backbone_fingerprint(spec: str) -> str:
    """A Hub id or preset is its name; a local folder (``tiny`` included) is its files."""
    folder = BUNDLED_BACKBONE if spec == "tiny" else Path(spec)
    if not folder.is_dir():
        return spec
    files = sorted(p for p in folder.iterdir() if p.suffix in (".json", ".safetensors", ".bin"))
    return digest(json.dumps([file_stamp(p)[1:] + [p.name] for p in files]))


def run_fingerprint(config: RunConfig, data: str, backbone: str | None = None,
                    world_size: int = 1) -> str:
    """The key of a result of ``config``'s run on data with fingerprint ``data`` (in
    ``world_size`` processes: the global batch is that many times the batch), on this
    hardware."""
    device = resolve_device(config.device)
    settings = {k: v for k, v in config.with_(device=device).to_dict().items()
                if k not in NOT_IN_FINGERPRINT}
    return digest(json.dumps({"settings": settings, "data": data, "code": code_version(),
                              "backbone": backbone or backbone_fingerprint(config.backbone),
                              "world_size": world_size,  # timings are of this hardware
                              "hardware": device_name(device)}, sort_keys=True))


def timing_fingerprint(config: TimingConfig) -> str:
    """The key of a timing record (``time_method``): its settings and the code."""
    settings = config.with_(device=resolve_device(config.device)).to_dict()
    return digest(json.dumps({**settings, "code": code_version()}, sort_keys=True))
