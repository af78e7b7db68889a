"""Cached loaders: models with ``st.cache_resource`` (shared, never mutated), results with
``st.cache_data`` keyed on small values (run path + weights time stamp + device + tile pixels +
method), so changing the tile or the method recomputes only what changed.

Cached models are shared by every session: nothing here changes a model's mode or parameters
(``interp_core.attribution`` restores both, and retraining runs in a subprocess).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch

from interp_core.consistency.history import ConsistencyHistory, read_consistency
from interp_core.data import TileDataset, open_split
from interp_core.evaluation.evaluate import EvalSettings, cache_path, read_cached, stored_maps_fingerprint
from interp_core._utils.device import describe_device, pick_device
from interp_core.runs import LoadedRun, load_run
from interp_core import catalog
from interp_core.evaluation import tile_analysis as compute


# -- catalog -----------------------------------------------------------------------------------
@st.cache_data(ttl=5, show_spinner=False)
def datasets() -> list[catalog.DatasetEntry]:
    """Datasets on disk (re-read every few seconds)."""
    return catalog.list_datasets()


@st.cache_data(ttl=5, show_spinner=False)
def runs() -> list[catalog.RunEntry]:
    """Runs on disk (re-read every few seconds, and at once after a job ends: ``runs.clear()``)."""
    return catalog.list_runs(catalog.list_datasets())


@st.cache_data(ttl=30, show_spinner=False)
def dataset_summary(path: str) -> dict[str, Any]:
    """``catalog.dataset_summary`` (counts, classes, masks, groups), re-read every 30 s."""
    return catalog.dataset_summary(Path(path))


def run_entry(key: str) -> catalog.RunEntry | None:
    """The run with this key (absolute path), if it still exists."""
    return next((r for r in runs() if r.key == key), None)


# -- device and models -----------------------------------------------------------------------------
def threads_setting() -> int:
    """Intra-op CPU threads for the app's torch work: half the cores, at most 4 (``INTERP_TORCH_THREADS``
    overrides). The dashboard's work per click is small, and it shares the CPU with Streamlit's own
    threads and with background training jobs: on an oversubscribed CPU, torch's spinning worker
    threads made one tile's attribution 20-30x slower than a single thread (measured on 2 cores)."""
    import os
    env = os.environ.get("INTERP_TORCH_THREADS")
    return int(env) if env and env.isdigit() and int(env) > 0 else max(1, min(4, (os.cpu_count() or 2) // 2))


@st.cache_resource(show_spinner=False)
def configure_threads() -> int:
    """Apply ``threads_setting()`` once per process (torch's setting is inherited by the script threads
    Streamlit starts afterwards)."""
    n = threads_setting()
    torch.set_num_threads(n)
    return n


@st.cache_resource(show_spinner=False)
def device(name: str) -> torch.device:
    """``interp_core._utils.device.pick_device`` (raises InterpError when the device is unavailable)."""
    configure_threads()
    return pick_device(name)


@st.cache_resource(show_spinner=False)
def device_description(name: str) -> str:
    """E.g. ``cpu (1 threads)`` or ``cuda: NVIDIA A100``."""
    return describe_device(device(name))


@st.cache_resource(show_spinner="Loading the model...", max_entries=24)
def model(run_key: str, stamp: int, device_name: str) -> LoadedRun:
    """A run's model in eval mode on the device; ``stamp`` (weights mtime) invalidates retrained runs."""
    return load_run(run_key, device(device_name))


@dataclass(frozen=True)
class ModelRef:
    """What identifies a cached model: pass this around instead of the model itself."""

    key: str
    stamp: int
    device: str

    def load(self) -> LoadedRun:
        """The cached model (loaded on first use)."""
        return model(self.key, self.stamp, self.device)

    @property
    def image_size(self) -> int:
        return int(self.load().config["image_size"])

    @property
    def classes(self) -> list[str]:
        return self.load().classes


def ref(entry: catalog.RunEntry, device_name: str) -> ModelRef:
    """The ``ModelRef`` of a run on a device."""
    return ModelRef(entry.key, entry.stamp, device_name)


# -- datasets and tiles --------------------------------------------------------------------------
@st.cache_resource(show_spinner=False, max_entries=32)
def split(path: str, split_name: str) -> TileDataset:
    """A split at its stored tile size (the model input size is applied per run)."""
    return open_split(path, split_name)


@st.cache_data(show_spinner=False, max_entries=4096)
def tile(path: str, split_name: str, index: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Tile ``index`` as uint8 ``[H, W, 3]`` and its evidence mask (bool) or None."""
    ds = split(path, split_name)
    return ds.read_image(index), ds.read_mask(index)


@st.cache_data(show_spinner=False, max_entries=4096)
def artifact(path: str, split_name: str, index: int) -> np.ndarray | None:
    """Tile ``index``'s artifact mask (bool) when the dataset has artifact masks, else None."""
    return split(path, split_name).read_artifact(index)


@st.cache_data(show_spinner=False, max_entries=4096)
def file_image(path: str) -> np.ndarray:
    """Any image file inside a dataset (e.g. a training tile named in consistency.npz)."""
    from interp_core.data import load_rgb
    return load_rgb(path).array


@st.cache_data(show_spinner="Predicting the split...", max_entries=64)
def split_predictions(r: ModelRef, path: str, split_name: str) -> np.ndarray:
    """Softmax probabilities ``[N, C]`` of a run on every tile of a split (for the gallery filters)."""
    from torch.utils.data import DataLoader

    from interp_core.evaluation.predict import predict_loader
    loaded = r.load()
    ds = open_split(path, split_name, image_size=loaded.config["image_size"])
    loader = DataLoader(ds, batch_size=128, shuffle=False)
    return predict_loader(loaded.model, loader, device(r.device)).probs.numpy()


# -- per-tile results ------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=4096)
def probs(r: ModelRef, image: np.ndarray) -> np.ndarray:
    """Class probabilities ``[C]`` of one tile."""
    loaded = r.load()
    return compute.predict_probs(loaded.model, image, loaded.config["image_size"])


def cam_layers(r: ModelRef) -> list[str]:
    """Grad-CAM layer names of a cached model (``interp_core.evaluation.tile_analysis.cam_layer_choices``)."""
    return compute.cam_layer_choices(r.load().model)


@st.cache_data(show_spinner=False, max_entries=4096)
def attribution(r: ModelRef, image: np.ndarray, method: str, target: int, cam_layer: str | None = None) -> np.ndarray:
    """Attribution map ``[S, S]`` of one tile at the model's input size ``S`` (``cam_layer``: Grad-CAM's module)."""
    loaded = r.load()
    return compute.explain_tile(loaded.model, image, loaded.config["image_size"], method, target, cam_layer)


@st.cache_data(show_spinner=False, max_entries=4096)
def tile_metrics(r: ModelRef, image: np.ndarray, method: str, target: int,
                 mask: np.ndarray | None, cam_layer: str | None = None) -> dict[str, float | None]:
    """Per-tile metrics of one map (``interp_core.evaluation.tile_analysis.tile_metrics``); the map itself comes from the cache."""
    loaded = r.load()
    a = attribution(r, image, method, target, cam_layer)
    return compute.tile_metrics(loaded.model, image, loaded.config["image_size"], a, target, mask)


@st.cache_data(show_spinner=False, max_entries=512)
def consistency(r: ModelRef, image: np.ndarray, target: int | None, eps: float, steps: int,
                threshold: str) -> compute.TileConsistency:
    """Explanation consistency of one tile (``interp_core.evaluation.tile_analysis.tile_consistency``)."""
    loaded = r.load()
    return compute.tile_consistency(loaded.model, image, loaded.config["image_size"], target, eps=eps, steps=steps,
                                    threshold=threshold)


@st.cache_data(show_spinner=False, max_entries=64)
def consistency_history(run_key: str, mtime: float) -> ConsistencyHistory | None:
    """An ECE run's ``consistency.npz`` (``mtime`` re-reads it after a new refresh)."""
    return read_consistency(run_key)


# -- long results computed with a progress bar -------------------------------------------------------
class ResultStore:
    """A small thread-safe LRU of results that are computed with a live progress bar (which
    ``st.cache_data`` cannot replay): the page looks a key up, computes on a miss, stores."""

    def __init__(self, size: int = 16):
        self.size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


@st.cache_resource(show_spinner=False)
def store(name: str) -> ResultStore:
    """The shared result store ``name`` (e.g. slide maps)."""
    return ResultStore()


@st.cache_resource(show_spinner=False)
def job_manager(root: str):
    """The background-job manager of ``root`` (state on disk, so it survives reloads and restarts)."""
    from interp_core.jobs.queue import JobManager
    return JobManager(root, max_running=1, max_queued=8)


# -- dataset-level evaluation (cached on disk beside each run by interp_core) ------------------------
@st.cache_data(show_spinner=False, max_entries=256)
def eval_cache_path(run_key: str, stamp: int, data: str, settings: tuple, maps: str | None = None) -> str:
    """Where ``cached_evaluate`` keeps this result (hashing the weights once per stamp); ``maps``: the
    fingerprint of the stored maps it was computed from, if any."""
    return str(cache_path(run_key, data, EvalSettings(**dict(settings)), maps))


@st.cache_data(show_spinner=False, max_entries=256)
def _stored_maps(run_key: str, stamp: int, data: str, settings: tuple, manifest_mtime: int) -> tuple[str, str] | None:
    found = stored_maps_fingerprint(run_key, data, EvalSettings(**dict(settings)))
    return None if found is None else (str(found[0]), found[1])


def stored_maps(entry: catalog.RunEntry, data: str, settings) -> tuple[str, str] | None:
    """``(folder, maps fingerprint)`` of the finished sharded explain job beside ``entry`` that an
    evaluation with ``settings`` can reuse (``interp_core.evaluation.evaluate.stored_maps_job``), or None;
    re-checked when the weights or the job's manifest change."""
    from dataclasses import asdict

    from interp_core.evaluation.shards import MANIFEST, default_job_dir
    try:
        mtime = (default_job_dir(entry.key, settings.split, settings.attribution) / MANIFEST).stat().st_mtime_ns
    except OSError:
        return None
    return _stored_maps(entry.key, entry.stamp, data, tuple(sorted(asdict(settings).items())), mtime)


def cached_eval_result(entry: catalog.RunEntry, data: str, settings, maps: str | None = None) -> dict | None:
    """The stored evaluation of ``entry`` for these settings (computed from the stored maps of
    fingerprint ``maps``, if given), or None when not computed yet."""
    from dataclasses import asdict

    return read_cached(eval_cache_path(entry.key, entry.stamp, data, tuple(sorted(asdict(settings).items())), maps))


def shipped_scaat_effect(sel, dataset: str = "synthetic-he") -> str | None:
    """The Home page's sentence on the shipped SCAAT run of ``dataset`` against its baseline, built
    from their stored test-split evaluations (``eval_cache``, shipped with the runs; default
    ``EvalSettings``), or None when either is missing (nothing is computed here)."""
    from . import text
    ds = next((d for d in sel.datasets if d.name == dataset), None)
    if ds is None:
        return None
    shipped = [r for r in sel.all_runs if r.source == "shipped" and r.dataset == dataset]
    scaat = next((r for r in shipped if r.objective == "scaat"), None)
    init = Path(str(scaat.config.get("init") or "")).name if scaat else ""
    base = next((r for r in shipped if r.objective == "erm" and r.name == init), None) or next(
        (r for r in shipped if r.objective == "erm"), None)
    if scaat is None or base is None:
        return None
    s = EvalSettings()
    results = [cached_eval_result(r, str(ds.path), s) for r in (base, scaat)]
    if None in results:
        return None
    return text.scaat_effect_sentence(dataset, results[0], results[1])
