"""Every session-state key of the dashboard, namespaced per page, in one place.

Widget keys are ``"<page>.<name>"``; values the pages share (the chosen dataset, runs and tile)
live under ``sidebar.*`` and ``shared.*``. Pages never invent keys inline: they use these constants,
so two pages cannot collide and a test can set any of them before ``AppTest.run()``.
"""
from __future__ import annotations

from typing import Any

import streamlit as st


#: Widget option keeping a page's widget value while the user is on another page (``**S.KEEP``).
KEEP = {"persist_state": "session"}


class Sidebar:
    """Keys of the shared sidebar."""

    DATASET = "sidebar.dataset"
    RUNS = "sidebar.runs"
    DEVICE = "sidebar.device"
    RUNS_FOR = "sidebar.runs_for"  # the dataset the run choice was made for
    SELECTION = "sidebar.selection"  # the resolved ui.sidebar.Selection of this script run


class Shared:
    """Values several pages share."""

    #: The tile chosen on Explore (a ui.widgets.ChosenTile; Consistency starts from it), or None.
    TILE = "shared.tile"


class Home:
    """Keys of the Home page."""

    GUIDED = "home.guided"
    IMPORT = "home.import"  # "Add your model" form (widget keys home.import.*) and its last result


class Explore:
    """Keys of the Explore page."""

    SOURCE = "explore.source"
    CAM_LAYER = "explore.cam_layer"  # Grad-CAM's module name ("" = automatic)
    SPLIT = "explore.split"
    CLASSES = "explore.classes"
    CORRECTNESS = "explore.correctness"
    CONFIDENCE = "explore.confidence"
    PAGE = "explore.page"
    TILE = "explore.tile"
    UPLOAD = "explore.upload"
    FIT_MODE = "explore.fit_mode"
    UPLOAD_TILE = "explore.upload_tile"
    FROM_SLIDE = "explore.from_slide"  # (image, name, notes) handed over by the Slide page
    METHODS = "explore.methods"
    ALPHA = "explore.alpha"
    CLIP = "explore.clip"
    CMAP = "explore.cmap"
    TARGET = "explore.target"
    METRICS = "explore.metrics"
    REFERENCE = "explore.reference"  # the run the change columns are measured against
    PICK_PREFIX = "explore.pick."


class Consistency:
    """Keys of the Consistency page."""

    SPLIT = "consistency.split"
    TILE = "consistency.tile"
    EPS = "consistency.eps"
    STEPS = "consistency.steps"
    THRESHOLD = "consistency.threshold"
    MEAN_THRESHOLD = "consistency.mean_threshold"
    ECE_RUN = "consistency.ece_run"
    GALLERY_SIZE = "consistency.gallery_size"


class Metrics:
    """Keys of the Metrics page."""

    SPLIT = "metrics.split"
    METHOD = "metrics.method"
    LIMIT = "metrics.limit"
    COMPUTE = "metrics.compute"
    RECOMPUTE = "metrics.recompute"
    REFERENCE = "metrics.reference"


class Train:
    """Keys of the Train page."""

    OBJECTIVE = "train.objective"
    INIT = "train.init"
    EPOCHS = "train.epochs"
    LR = "train.lr"
    BATCH = "train.batch"
    NAME = "train.name"
    OPTION_PREFIX = "train.opt."
    START = "train.start"
    CANCEL_PREFIX = "train.cancel."
    LAST_SUBMIT = "train.last_submit"
    SHOW_FINISHED = "train.show_finished"
    SEEN = "train.seen_states"  # job id -> state at the last poll (to notice a job finishing)
    COMPARE_PREFIX = "train.compare."  # + job id: the button opening Metrics against the run it started from
    OPEN_METRICS = "train.open_metrics"  # set by that button: switch to Metrics at the next run


class Slide:
    """Keys of the Slide page."""

    SOURCE = "slide.source"
    UPLOAD = "slide.upload"
    RUNS = "slide.runs"
    METHOD = "slide.method"
    SHOW = "slide.show"
    CLASS = "slide.class"
    ALPHA = "slide.alpha"
    COMPUTE = "slide.compute"
    FILE = "slide.file"          # a whole-slide file chosen from the slides folder
    PATH = "slide.path"          # or typed as a path
    LEVEL = "slide.level"        # pyramid level read
    MAX_TILES = "slide.max_tiles"
    RUN_A = "slide.run_a"        # left viewer's run
    RUN_B = "slide.run_b"        # right viewer's run
    STRIDE = "slide.stride"      # "tile" or "half"
    NORMALIZE = "slide.normalize"
    CMAP = "slide.cmap"
    CMAP_FOR = "slide.cmap_for"  # the overlay the colour map was chosen for
    VIEWER = "slide.viewer"      # the deep-zoom component (its value: the last click)
    CLICK_N = "slide.click_n"    # the click counter last handled
    TILE = "slide.tile"          # (row, col) of the tile shown in detail
    DETAIL_METHOD = "slide.detail_method"
    TO_EXPLORE = "slide.to_explore"
    STARTED = "slide.started"    # when this session last started explain-slide jobs (time.time())
    FALLBACK_ROW = "slide.fallback_row"  # tile row/column picked when the deep-zoom viewer is unavailable
    FALLBACK_COL = "slide.fallback_col"
    FALLBACK_SHOW = "slide.fallback_show"


class Report:
    """Keys of the Report page."""

    SPLIT = "report.split"
    METHOD = "report.method"
    LIMIT = "report.limit"
    BUILD = "report.build"
    RESULT = "report.result"
    PREVIEW = "report.preview"
    REFERENCE = "report.reference"


def init(key: str, value: Any) -> None:
    """Give ``key`` a starting value unless it has one (call before the widget that uses the key)."""
    if key not in st.session_state:
        st.session_state[key] = value


def get(key: str, default: Any = None) -> Any:
    """The value stored under ``key``, or ``default``."""
    return st.session_state.get(key, default)


def put(key: str, value: Any) -> None:
    """Store ``value`` under ``key``."""
    st.session_state[key] = value
