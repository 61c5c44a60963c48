"""The node's model directory: `<root>/models/<storageKey>` per model.

The root is the host directory the node group's PV points at, as this agent sees it (the
DaemonSet mounts it at /mnt/models). Only the completion marker written by the downloader makes
a model directory count as complete.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import structlog

from controller.api.naming import MODELS_DIR
from controller.download import is_intact

log = structlog.get_logger(__name__)


class ModelDirectory:
    """Reads and prunes the models directory of one node."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models = self.root / MODELS_DIR

    def ensure(self) -> None:
        """Create `<root>/models`; an unwritable root raises OSError (the reconcile fails)."""
        self.models.mkdir(parents=True, exist_ok=True)

    def is_complete(self, key: str, uri: str) -> bool:
        """The marker says the model is complete, and every file it counted is still there."""
        return is_intact(self.models / key, uri)

    async def remove_unwanted(self, wanted_keys: set[str]) -> list[str]:
        """Delete model directories not in `wanted_keys`; plain files are left alone."""
        removed = []
        for path in sorted(self.models.iterdir()) if self.models.is_dir() else []:
            if path.is_dir() and not path.is_symlink() and path.name not in wanted_keys:
                await asyncio.to_thread(shutil.rmtree, path)
                log.info("model folder removed", path=str(path))
                removed.append(path.name)
        return removed
