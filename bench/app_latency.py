"""Dashboard latency, measured with Streamlit's AppTest (no browser): how long from choosing another
tile on Explore until both models' overlays (saliency and Grad-CAM) are drawn, and how long a cold
start takes to the first rendered page.

    python bench/app_latency.py                 # the shipped sample data and runs
    python bench/app_latency.py --tiny          # a tiny generated tree (when sample_data/runs is absent)

Target (issue "The dashboard"): under 0.5 s per tile switch on the CPU for ``smallcnn`` with
saliency and Grad-CAM, two models side by side. Every tile switch goes to a tile not seen before,
so attributions and per-tile metrics are computed, not read from the cache.

AppTest runs each page in-process like the server does, without the network and the browser's
drawing; a real server reaches ``st.navigation`` mode after its first run (``ui.shell``), which is
mirrored here so each measured run is one script run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
TARGET_S = 0.5


def tiny_tree(root: Path) -> Path:
    """A small sample_data tree: synthetic-he-like toy data (64 px), a baseline and its SCAAT retrain."""
    from interp_core.testing import make_tiny_dataset
    from interp_core.training import TrainConfig, train
    data = make_tiny_dataset(root / "sample_data" / "data" / "synthetic-he", n_per_class=16, size=64,
                             classes=("normal", "tumor"))
    runs = root / "sample_data" / "runs" / "synthetic-he"
    quiet = dict(progress=False, log=lambda m: None)
    train(TrainConfig(data=str(data), out=str(runs / "baseline"), epochs=1, batch_size=16), **quiet)
    train(TrainConfig(data=str(data), out=str(runs / "scaat"), objective="scaat", epochs=1, batch_size=16,
                      init=str(runs / "baseline")), **quiet)
    return root / "sample_data"


def navigation_mode() -> None:
    """Make AppTest behave like a server past its first run (see the module docstring)."""
    import streamlit.testing.v1.app_test as app_test
    from streamlit.runtime.pages_manager import PagesManager

    class NavigationPagesManager(PagesManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            PagesManager.uses_pages_directory = False

    app_test.PagesManager = NavigationPagesManager


def cold_start(env: dict) -> tuple[float, float]:
    """Seconds from a new Python process to Home rendered, and from there to Explore rendered."""
    code = (
        "import time; t0 = time.perf_counter()\n"
        "from streamlit.testing.v1 import AppTest\n"
        f"import sys; sys.path.insert(0, {str(REPO / 'bench')!r}); from app_latency import navigation_mode\n"
        "navigation_mode()\n"
        f"at = AppTest.from_file({str(REPO / 'app.py')!r}, default_timeout=600).run()\n"
        "assert not at.exception, at.exception\n"
        "t1 = time.perf_counter()\n"
        "at.switch_page('pages/explore.py').run()\n"
        "assert not at.exception, at.exception\n"
        "print(t1 - t0, time.perf_counter() - t1)\n"
    )
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    total = time.perf_counter() - start
    inside_home, explore = (float(v) for v in out.stdout.split()[-2:])
    return total - explore, explore


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="generate a tiny tree instead of using sample_data/")
    ap.add_argument("--sample-data", type=Path, default=REPO / "sample_data",
                    help="a sample_data folder (data/ and runs/ inside); default the shipped one")
    ap.add_argument("--repeats", type=int, default=12, help="tile switches to time (default 12)")
    ap.add_argument("--skip-cold", action="store_true", help="do not measure the cold start")
    args = ap.parse_args()

    import torch
    tmp = tempfile.TemporaryDirectory(prefix="app_latency_")
    sample = args.sample_data
    from interp_core.runs import find_runs
    if args.tiny or not find_runs(sample / "runs"):
        print("building a tiny sample tree ...", file=sys.stderr)
        sample = tiny_tree(Path(tmp.name))
    env = {**os.environ, "INTERP_SAMPLE_DATA": str(sample), "INTERP_RUNS_DIR": str(Path(tmp.name) / "runs"),
           "PYTHONPATH": str(REPO)}
    os.environ.update({k: env[k] for k in ("INTERP_SAMPLE_DATA", "INTERP_RUNS_DIR")})

    cold_home = cold_explore = None
    if not args.skip_cold:
        cold_home, cold_explore = cold_start(env)

    navigation_mode()
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=600).run()
    at.sidebar.selectbox(key="sidebar.device").set_value("cpu").run()
    from interp_core.catalog import list_runs
    found = [r for r in list_runs() if r.arch == "smallcnn" and r.dataset == at.sidebar.selectbox(
        key="sidebar.dataset").value]
    by_objective = {}
    for r in found:
        by_objective.setdefault(r.objective, r)
    chosen = [r.key for r in (by_objective.get("erm"), by_objective.get("scaat")) if r] or [r.key for r in found[:2]]
    at.sidebar.multiselect(key="sidebar.runs").set_value(chosen).run()
    at.switch_page("pages/explore.py").run()
    at.multiselect(key="explore.methods").set_value(["saliency", "gradcam"]).run()
    n_tiles = len(at.selectbox(key="explore.tile").options)
    assert not at.exception, at.exception

    def overlays() -> int:
        return sum("explains" in c for img in at.image for c in img.captions)

    def switch(tiles: range) -> list[float]:
        out = []
        for j in tiles:
            at.selectbox(key="explore.tile").set_value(j)
            t = time.perf_counter()
            at.run()
            out.append(time.perf_counter() - t)
            assert not at.exception, at.exception
            assert overlays() == 2 * len(chosen), overlays()
        return out

    n = max(1, min(args.repeats, (n_tiles - 1) // 2))
    at.toggle(key="explore.metrics").set_value(False).run()
    bare = switch(range(1, n + 1))
    at.toggle(key="explore.metrics").set_value(True).run()
    full = switch(range(n + 1, 2 * n + 1))
    t = time.perf_counter()
    at.multiselect(key="explore.methods").set_value(["saliency"]).run()
    method_switch = time.perf_counter() - t

    def stats(times: list[float]) -> str:
        p90 = sorted(times)[max(0, int(round(0.9 * len(times))) - 1)]
        return f"median {statistics.median(times):.3f} s, p90 {p90:.3f} s, max {max(times):.3f} s ({len(times)} tiles)"

    med = statistics.median(bare)
    from ui.cache import threads_setting
    print(f"data: {sample}  torch {torch.__version__}, {threads_setting()} intra-op CPU thread(s) "
          f"(the app's setting), {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"models: {', '.join(Path(k).name for k in chosen)} (smallcnn); methods: saliency, gradcam; device cpu")
    print(f"tile switch -> both models' overlays drawn (every tile new): {stats(bare)}")
    verdict = "met" if med < TARGET_S else "NOT met"
    print(f"  target {TARGET_S:.1f} s: median / target = {med / TARGET_S:.2f} ({verdict})")
    print(f"tile switch -> overlays and per-tile metrics (drawn after the overlays): {stats(full)}")
    print(f"method switch (drop gradcam, maps cached): {method_switch:.3f} s")
    if cold_home is not None:
        print(f"cold start, new process to Home rendered (imports included): {cold_home:.2f} s")
        print(f"then first Explore render (models loaded, split predicted): {cold_explore:.2f} s")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
