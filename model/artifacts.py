"""What checkpoints (checkpoint.py) and LoRA adapters (lora.py) both need.

Atomic directory writes, file hashes, and which parameter names are LoRA adapters or the
World Action Model's own heads. Both modules import this one, so lora.py needs nothing from
checkpoint.py, and checkpoint.py imports lora.py (and with it peft) only to merge adapters.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

# Parameters that exist only in the World Action Model (never in Wan weights).
NEW_PARAMETER_PREFIXES = ("action_pos", "action_encoders.", "state_encoders.", "action_decoders.")


def has_lora(model: nn.Module) -> bool:
    return any(".lora_" in name for name, _ in model.named_parameters())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_directory(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary sibling directory to fill; on success it replaces `directory`.

    An existing directory is moved aside first and deleted after, so readers see either the
    old complete directory or the new one (or, for an instant, none), never a partial one.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            target.rename(old / "dir")
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
