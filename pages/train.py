"""Train: start a retraining as a background job (a subprocess of the project's CLI), watch it live."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import streamlit as st

from interp_core.viz import figures
from interp_core.errors import InterpError
from interp_core.runs import read_history
from interp_core.training import DEFAULT_LR_FINETUNE, DEFAULT_LR_SCRATCH
from interp_core.training.mode_costs import mode_costs
from interp_core.training.objectives import get_objective, list_objectives, objective_names
from interp_core import catalog
from ui import cache, shell, sidebar, text
from ui import state as S
from ui.errors import guard, need

shell.leave_legacy_pages_mode()

#: Objectives offered first, in this order; their descriptions are the objectives' own (core).
OBJECTIVES = {n: f"{n.upper()}: {d}" for n, d in list_objectives().items()}
FIRST = ("scaat", "ece", "sgt", "erm")

st.title("Retrain a model")
st.markdown("Start a training run in the **background**: it keeps going if you switch pages or reload, and "
            "several can be queued (one trains at a time). When it finishes, the new model appears in every "
            "model picker. Fine-tuning an existing model for a few epochs is the usual way to apply SCAAT or ECE.")
sel = sidebar.selection()
need(sel.dataset is not None, text.NO_DATASET + " Training needs a dataset.")
jobs = cache.job_manager(str(catalog.jobs_root()))

# -- the form ------------------------------------------------------------------------------------
c1, c2 = st.columns(2)
names = [n for n in FIRST if n in objective_names()] + [n for n in objective_names() if n not in FIRST]
S.init(S.Train.OBJECTIVE, "scaat" if "scaat" in names else names[0])
objective = c1.selectbox("Objective", names, key=S.Train.OBJECTIVE, format_func=lambda n: OBJECTIVES.get(n, n),
                         **S.KEEP)
inits = [""] + [r.key for r in sel.compatible if not r.is_training]
by_key = {r.key: r for r in sel.compatible}
base = next((r.key for r in sel.compatible if r.objective == "erm" and r.dataset == sel.dataset.name), "")
S.init(S.Train.INIT, base)
init = c2.selectbox("Start from", inits, key=S.Train.INIT,
                    format_func=lambda k: catalog.picker_label(by_key[k], sel.dataset.name) if k
                    else "scratch (a new, untrained model)",
                    help="Fine-tune an existing model (recommended for SCAAT and ECE) or train from scratch.", **S.KEEP)
c1, c2, c3, c4 = st.columns([1, 1, 1, 1.6])  # the run name whole, its date included
S.init(S.Train.EPOCHS, 2)
epochs = c1.number_input("Epochs", 1, 500, key=S.Train.EPOCHS, help="Passes over the training tiles.", **S.KEEP)
lr_key = f"{S.Train.LR}.{'finetune' if init else 'scratch'}"
S.init(lr_key, DEFAULT_LR_FINETUNE if init else DEFAULT_LR_SCRATCH)
lr = c2.number_input("Learning rate", 1e-6, 1.0, key=lr_key, format="%.0e", step=1e-5,
                     help=f"Default {DEFAULT_LR_FINETUNE:g} when fine-tuning (stable), {DEFAULT_LR_SCRATCH:g} from "
                          "scratch.", **S.KEEP)
S.init(S.Train.BATCH, 64)
batch = c3.number_input("Batch size", 2, 1024, key=S.Train.BATCH, **S.KEEP)
name_key = f"{S.Train.NAME}.{objective}"


def _default_name() -> str:
    return f"{sel.dataset.name}-{objective}-{time.strftime('%Y%m%d-%H%M%S')}"


S.init(name_key, _default_name())
name = c4.text_input("Name of the new run", key=name_key, help="Saved under `runs/<name>/`.", **S.KEEP)

flags: list[str] = []
mode_field = next((f for f in dataclasses.fields(get_objective(objective).Options) if f.name == "mode"), None)
if mode_field is not None:  # exact or fast (issue 16), each with its cost read from the speed benchmark's results
    costs = mode_costs(objective, mode_field.metadata["choices"])
    mode_key = f"{S.Train.OPTION_PREFIX}{objective}.mode"
    S.init(mode_key, mode_field.default)
    mode = st.radio("Mode", list(mode_field.metadata["choices"]), key=mode_key, horizontal=True,
                    format_func=lambda m: f"{m}: {costs[m]}" if m in costs else m,
                    help=mode_field.metadata.get("help"), **S.KEEP)
    if mode != mode_field.default:
        flags += ["--mode", mode]
with st.expander(f"{objective.upper()} options (defaults filled in)"):
    fields = [f for f in dataclasses.fields(get_objective(objective).Options) if f.name != "mode"]
    cols = st.columns(3)
    for j, f in enumerate(fields):
        default = f.default if f.default is not dataclasses.MISSING else None
        meta = dict(f.metadata or {})
        key = f"{S.Train.OPTION_PREFIX}{objective}.{f.name}"
        col, label, helptext = cols[j % 3], f.name.replace("_", " "), meta.get("help")
        if isinstance(default, bool):
            S.init(key, default)
            value = col.checkbox(label, key=key, help=helptext, **S.KEEP)
        elif meta.get("choices"):
            S.init(key, default)
            value = col.selectbox(label, list(meta["choices"]), key=key, help=helptext, **S.KEEP)
        elif isinstance(default, (int, float)):
            S.init(key, default)
            value = col.number_input(label, key=key, help=helptext,
                                     **({"step": 1} if isinstance(default, int) else {"format": "%.4g"}), **S.KEEP)
        else:
            S.init(key, "" if default is None else str(default))
            value = col.text_input(label, key=key, help=(helptext or "") + " (empty: automatic)", **S.KEEP)
        if value is not None and value != "" and value != default:
            flags += [f"--{f.name.replace('_', '-')}", str(value).lower() if isinstance(value, bool) else str(value)]

def _submit(args: list[str], name: str, name_key: str) -> None:
    """Start button callback: submit the job, then give the name field a fresh default (allowed here,
    before the widgets are drawn again)."""
    try:
        run_dir = catalog.new_run_dir(name)
        info = jobs.submit(args, run_dir)
    except InterpError as e:
        S.put(S.Train.LAST_SUBMIT, ("error", str(e)))
        return
    S.put(S.Train.LAST_SUBMIT, ("ok", f"Job {info.id} is {info.state}: training `{run_dir.name}`."))
    fresh = _default_name()
    st.session_state[name_key] = fresh if fresh != name else f"{fresh}-b"


args = ["--data", str(sel.dataset.path), "--objective", objective, "--epochs", str(int(epochs)), "--lr", f"{lr:g}",
        "--batch-size", str(int(batch)), "--device", sel.device, *flags] + (["--init", init] if init else [])
st.button("Start training", type="primary", icon=":material/play_arrow:", key=S.Train.START, on_click=_submit,
          args=(args, name, name_key))
outcome = S.get(S.Train.LAST_SUBMIT)
if outcome:
    S.put(S.Train.LAST_SUBMIT, None)
    if outcome[0] == "ok":
        st.success(outcome[1], icon=":material/check_circle:")
    else:
        st.error(outcome[1], icon=":material/error:")


# -- the jobs, polled ----------------------------------------------------------------------------
def _cancel(job_id: str) -> None:
    try:
        jobs.cancel(job_id)
    except InterpError as e:
        S.put(S.Train.LAST_SUBMIT, ("error", f"cancel failed: {e}"))


def _describe(args: list[str]) -> str:
    """``--objective scaat --init /…/baseline --epochs 3`` -> 'SCAAT from baseline, 3 epochs, ...'."""
    a = dict(zip(args[::2], args[1::2])) if len(args) % 2 == 0 else {}
    if not a:
        return " ".join(args)[:160]
    start = f"from {Path(a['--init']).name}" if a.get("--init") else "from scratch"
    extra = [f"{k[2:]} {v}" for k, v in a.items() if k not in ("--data", "--init", "--objective", "--epochs", "--lr",
                                                                "--batch-size", "--device")]
    return (f"{a.get('--objective', '?').upper()} {start} on {Path(a.get('--data', '?')).name}, "
            f"{a.get('--epochs', '?')} epoch(s), lr {a.get('--lr', 'default')}, batch {a.get('--batch-size', '?')}"
            + (f"; {', '.join(extra)}" if extra else ""))


STATE_ICON = {"queued": ":material/schedule:", "running": ":material/sync:", "finished": ":material/check_circle:",
              "failed": ":material/error:", "cancelled": ":material/cancel:", "diverged": ":material/warning:"}


def _job_card(job) -> None:
    with st.container(border=True):
        c1, c2 = st.columns([5, 1])
        c1.markdown(f"{STATE_ICON.get(job.state, '')} **{job.run_dir.name}** — {job.state}  \n"
                    f":gray[{_describe(job.args)}]")
        if job.active:
            c2.button("Cancel", key=f"{S.Train.CANCEL_PREFIX}{job.id}", on_click=_cancel, args=(job.id,),
                      icon=":material/stop:")
        p = job.progress
        where = f"epoch {min(int(p.get('epoch', 0)) + 1, int(p.get('epochs', 1)))}/{p.get('epochs')}, " \
                f"{p.get('phase', '')} {p.get('step', 0)}/{p.get('steps', 0)}" if p.get("epochs") and job.active else ""
        st.progress(job.fraction, text=where or job.state)
        if job.message:
            (st.error if job.state in ("failed", "diverged") else st.caption)(job.message)
        hist = read_history(job.run_dir)
        if job.state == "finished" and hist:
            _finished_summary(job, hist)
        if hist:
            a, b = st.columns(2)
            a.plotly_chart(figures.history_figure("train_loss", {"train": hist}, height=220, live=True),
                           key=f"train.loss.{job.id}", config={"displayModeBar": False})
            b.plotly_chart(figures.history_figure("val_accuracy", {"validation": hist}, height=220, live=True),
                           key=f"train.acc.{job.id}", config={"displayModeBar": False})
        if job.active or job.state in ("failed", "diverged"):
            with st.expander("Log"):
                st.code(jobs.log_tail(job.id, 15) or "(nothing yet)", language="text")


def _open_comparison(run_key: str, init_key: str, dataset: str | None) -> None:
    """Show the new run and the run it started from on Metrics, the latter as the reference."""
    if dataset:
        st.session_state[S.Sidebar.DATASET] = dataset
        st.session_state[S.Sidebar.RUNS_FOR] = dataset
    st.session_state[S.Sidebar.RUNS] = [init_key, run_key]
    st.session_state[S.Metrics.REFERENCE] = init_key
    S.put(S.Train.OPEN_METRICS, True)


def _finished_summary(job, hist: list[dict]) -> None:
    """Final validation accuracy of a finished job and a button comparing it with the run it started from."""
    accs = [h["val_accuracy"] for h in hist if h.get("val_accuracy") is not None]
    c1, c2 = st.columns([3, 2])
    if accs:
        c1.markdown(f"Final validation accuracy **{accs[-1]:.3f}**" + (f" (best {max(accs):.3f})" if len(accs) > 1
                                                                        else ""))
    entry = cache.run_entry(str(job.run_dir.resolve()))
    parent = catalog.parent_run(entry, cache.runs()) if entry is not None else None
    if entry is not None and parent is not None:
        c2.button(f"Compare with {parent.name} on Metrics", key=f"{S.Train.COMPARE_PREFIX}{job.id}",
                  icon=":material/compare_arrows:", on_click=_open_comparison,
                  args=(entry.key, parent.key, entry.dataset or parent.dataset))


def jobs_panel() -> None:
    if S.get(S.Train.OPEN_METRICS):  # the compare button of a finished job (inside this fragment)
        S.put(S.Train.OPEN_METRICS, False)
        st.switch_page("pages/metrics.py")
    with guard("listing the jobs"):
        listed = jobs.list()
        seen = S.get(S.Train.SEEN, {})
        now = {j.id: j.state for j in listed}
        newly_done = [j for j in listed if j.state == "finished" and seen.get(j.id) not in (None, "finished")]
        S.put(S.Train.SEEN, now)
        if newly_done:
            cache.runs.clear()
            st.toast(f"Finished: {', '.join(j.run_dir.name for j in newly_done)}. It is now in the model pickers.",
                     icon=":material/check_circle:")
            st.rerun()
        if not listed:
            st.caption("No training job yet.")
            return
        active = [j for j in listed if j.active]
        S.init(S.Train.SHOW_FINISHED, True)
        show_all = st.toggle("Show finished jobs", key=S.Train.SHOW_FINISHED, **S.KEEP)
        for job in (listed if show_all else active)[:12]:
            _job_card(job)


if S.get(S.Train.OPEN_METRICS):
    S.put(S.Train.OPEN_METRICS, False)
    st.switch_page("pages/metrics.py")
st.subheader("Jobs")
any_active = any(j.active for j in jobs.list())
st.fragment(jobs_panel, run_every=2.0 if any_active else None)()
