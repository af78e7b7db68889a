"""The four registries share one shape: ``register_*`` refuses a duplicate, ``get_*`` names the known
entries when asked for an unknown one, ``list_*`` gives name -> one-line description."""
from __future__ import annotations

import pytest
from torch import nn

from interp_core._registry import DuplicateRegistrationError, Registry
from interp_core.attribution import METHODS, get_method, list_methods
from interp_core.attribution.registry import register_method
from interp_core.errors import InterpError
from interp_core.metrics import METRICS, get_metric, list_metrics, register_metric
from interp_core.models import create_model, get_model, list_models, register_model
from interp_core.training.objectives import Objective, get_objective, list_objectives, objective_names, register_objective


def _fn(*args, **kwargs):
    """Never called (the registration is refused). Higher is better."""
    raise AssertionError("a refused registration must not run")


def test_registry_refuses_a_duplicate_and_lists_known_names_for_an_unknown_one():
    reg: Registry[int] = Registry("widget", sort_names=True, hint="or a number")
    reg.add("b", 1)
    reg.add("a", 2)
    with pytest.raises(DuplicateRegistrationError, match="widget 'a' is already registered"):
        reg.add("a", 3)
    assert reg.get("a") == 2 and reg.names() == ["a", "b"] and list(reg) == ["a", "b"] and len(reg) == 2
    with pytest.raises(InterpError, match=r"^unknown widget 'c'; choose one of a, b, or a number$"):
        reg.get("c")
    with pytest.raises(InterpError, match="unknown widget 3"):
        reg.get(3)  # type: ignore[arg-type]


def test_attribution_methods_duplicate_refused_and_unknown_named():
    before = dict(METHODS)
    with pytest.raises(DuplicateRegistrationError, match="attribution method 'saliency' is already registered"):
        register_method("saliency", description="x", signed=True, cost="fast", needs_gradients=True)(_fn)
    assert METHODS == before and get_method("saliency").compute is not _fn
    with pytest.raises(InterpError, match="unknown attribution method 'nope'; choose one of saliency, "):
        get_method("nope")
    assert list(list_methods()) == list(METHODS)


def test_metrics_duplicate_refused_and_unknown_named():
    before = dict(METRICS)
    with pytest.raises(DuplicateRegistrationError, match="metric 'accuracy' is already registered"):
        register_metric(name="accuracy", category="accuracy", higher_is_better=True, attribution_form="none",
                        description="x", reference="x", requires=("pred", "y"))(_fn)
    assert METRICS == before and get_metric("accuracy").fn is not _fn
    with pytest.raises(InterpError, match="unknown metric 'nope'; choose one of accuracy, .*max_sensitivity"):
        get_metric("nope")
    assert set(list_metrics()) == set(METRICS) and all(list_metrics().values())


def test_models_duplicate_refused_and_unknown_named():
    before = list_models()
    with pytest.raises(DuplicateRegistrationError, match="architecture 'smallcnn' is already registered"):
        register_model("smallcnn", "x")(_fn)
    assert list_models() == before and get_model("smallcnn") is not _fn
    msg = r"unknown architecture 'nope'; choose one of resnet18, smallcnn, or timm/NAME or torchvision/NAME"
    with pytest.raises(InterpError, match=msg):
        get_model("nope")
    with pytest.raises(InterpError, match=msg):
        create_model("nope", num_classes=2)
    assert isinstance(create_model("smallcnn", num_classes=2), nn.Module)


def test_objectives_duplicate_refused_and_unknown_named():
    erm = get_objective("erm")

    class Impostor(Objective):
        name = "erm"

    with pytest.raises(DuplicateRegistrationError, match="objective 'erm' is already registered"):
        register_objective(Impostor)
    assert get_objective("erm") is erm  # the old code silently replaced it
    with pytest.raises(InterpError, match=r"unknown objective 'nope'; choose one of ece, erm, ") as err:
        get_objective("nope")
    builtin = ["ece", "erm", "jtt", "scaat", "sgt"]  # other test modules may have registered test objectives
    listed = str(err.value).split("choose one of ", 1)[1].split(", ")
    assert listed == sorted(listed) and set(builtin) <= set(listed)
    assert list(list_objectives()) == objective_names() and set(builtin) <= set(objective_names())
    assert list_objectives()["erm"].startswith("plain cross-entropy")
