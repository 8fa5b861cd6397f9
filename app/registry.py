"""Model versions under models/: copying a directory in, loading versions, swapping the active one.

Which version is active lives in the database (table model_versions), so every worker and the
CLI agree; this object holds what one process has loaded. The active reference is replaced
atomically, so a request that already took a model keeps it until it finishes.

A loaded version remembers a stamp of its files (inode, size, mtime, ctime). Before a cached
version is served again the stamp is compared with the files on disk: files changed since the
load (the usual reason an activation is refused) mean the version is loaded and checked again,
so every process that shares models/ gives the same answer, not one cached in memory.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

from app.core.model_card import CARD_FILE, GRAPH_FILE, VERSION_PATTERN
from app.errors import InvalidModel, NotFound
from app.inference import OnnxModel, read_card

log = logging.getLogger(__name__)

SERVED_FILES = (GRAPH_FILE, CARD_FILE)
# After a failed load of the version the database calls active, wait before trying again.
_RETRY_S = 30.0

Stamp = tuple[tuple[int, int, int, int], ...]


def files_stamp(directory: Path) -> Stamp | None:
    """What identifies the served files' current state; None when one is missing."""
    stamps = []
    for name in SERVED_FILES:
        try:
            st = os.stat(directory / name)
        except OSError:
            return None
        stamps.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stamps)


def check_version_name(version: str) -> str:
    """Versions become directory names: refuse anything that could escape models/."""
    if not VERSION_PATTERN.match(version):
        raise NotFound(f"model version {version!r} is not a valid version name")
    return version


class Registry:
    """Loaded model versions (a small LRU) and the active one, for one process."""

    def __init__(self, models_dir: Path, *, threads: int = 1, max_loaded: int = 3) -> None:
        self.models_dir = models_dir
        self.threads = threads
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[str, OnnxModel] = OrderedDict()
        self._stamps: dict[str, Stamp | None] = {}
        self._active: OnnxModel | None = None
        self._lock = threading.Lock()
        self._failed: dict[str, tuple[float, str]] = {}  # version -> (when, why)

    @property
    def active(self) -> OnnxModel | None:
        """The model new requests use; read it once per request."""
        return self._active

    @property
    def load_error(self) -> str | None:
        """Why the version the database calls active is not loaded here, if it is not."""
        if not self._failed:
            return None
        version, (_, why) = next(reversed(self._failed.items()))
        return f"model version {version!r} failed to load: {why}"

    def directory(self, version: str) -> Path:
        return self.models_dir / check_version_name(version)

    def get(self, version: str, *, reload: bool = False) -> OnnxModel:
        """A loaded, checked model for `version` (loaded on first use, again if `reload` or if
        its files changed since). A version that fails to load leaves the cache."""
        directory = self.directory(version)
        stamp = files_stamp(directory)
        with self._lock:
            model = None if reload else self._loaded.get(version)
            if model is not None and stamp is not None and self._stamps.get(version) == stamp:
                self._loaded.move_to_end(version)
                return model
        try:
            model = OnnxModel.load(directory, threads=self.threads)
            if model.version != version:
                raise InvalidModel(f"{directory}/model.json says version {model.version!r}")
        except Exception:
            self.forget(version)
            raise
        with self._lock:
            self._loaded[version] = model
            self._stamps[version] = stamp
            self._loaded.move_to_end(version)
            while len(self._loaded) > self.max_loaded:
                old, _ = self._loaded.popitem(last=False)  # in-flight users keep their reference
                self._stamps.pop(old, None)
        return model

    def forget(self, version: str) -> None:
        """Drop `version` from the cache (requests in flight keep their reference)."""
        with self._lock:
            self._loaded.pop(version, None)
            self._stamps.pop(version, None)

    def swap(self, model: OnnxModel | None) -> None:
        """Make `model` the one new requests get; requests in flight keep the old one."""
        self._active = model
        if model is not None:
            self._failed.pop(model.version, None)
        log.info("active model: %s", model.version if model else None)

    def sync(self, version: str | None) -> OnnxModel | None:
        """Follow the database's active version; on a load failure keep serving the current."""
        current = self._active
        if version is None or (current is not None and current.version == version):
            if version is None and current is not None:
                self.swap(None)
                return None
            return current
        failed = self._failed.get(version)
        if failed is not None and time.monotonic() - failed[0] < _RETRY_S:
            return current
        try:
            model = self.get(version)
        except (InvalidModel, NotFound) as exc:
            self._failed[version] = (time.monotonic(), str(exc))
            log.error(
                "active model %s does not load, still serving %s: %s",
                version,
                current.version if current else None,
                exc,
            )
            return current
        self.swap(model)
        return model

    def import_directory(self, source: Path) -> OnnxModel:
        """Check a model directory and copy its served files to models/<version>/.

        The copy goes to a temporary sibling first and is renamed into place, so a reader never
        sees half a directory. Loading the copy re-checks it.
        """
        if not source.is_dir():
            raise InvalidModel(f"{source} is not a directory")
        version = read_card(source).version  # a valid directory name (the card checks it)
        OnnxModel.load(source, threads=self.threads)  # refuse before copying anything
        target = self.models_dir / version
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise InvalidModel(
                f"version {version!r} names a file in the models directory that is not a "
                "model version; give the model another version in model.json"
            )
        if source.resolve() != target.resolve():
            self.models_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.models_dir))
            try:
                for name in SERVED_FILES:
                    shutil.copy2(source / name, staging / name)
                if target.exists():
                    shutil.rmtree(target)  # leftover of a registration that never committed
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        self.forget(version)
        return self.get(version)
