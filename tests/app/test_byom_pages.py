"""AppTest: "Add your model" on Home (a timm ResNet state dict as .pth, a ViT as .safetensors),
then the imported runs on Explore, Metrics, Slide and Report, and the Grad-CAM layer select box."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from interp_core.models import create_model
    d = tmp_path_factory.mktemp("byom-weights")
    torch.manual_seed(0)
    net = create_model("timm/test_resnet", 1000, image_size=32).net  # another class count: head replaced
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, d / "resnet.pth")
    vit = create_model("timm/test_vit", 2, image_size=32).net
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(d / "vit.safetensors"))
    return d


def _add(h, at, name, arch, path, size):
    k = "home.import"
    at.text_input(key=f"{k}.arch").input(arch)
    at.text_input(key=f"{k}.name").input(name)
    at.text_input(key=f"{k}.path").input(str(path))
    at.text_input(key=f"{k}.classes").input("normal, tumor")
    at.number_input(key=f"{k}.size").set_value(size)
    at.button(key="FormSubmitter:home.import.form-Add model").click().run()
    h.assert_clean(at)
    return at


def _vit_gradcam(at):
    """The image shown for the imported ViT in the Grad-CAM row (the last row drawn)."""
    return [img.value for img in at.image if any("my-vit" in c and "explains" in c for c in img.captions)][-1]


def _overlays(at) -> list[str]:
    return [c for img in at.image for c in img.captions if "explains" in c]


@pytest.mark.slow
def test_add_your_model_then_every_page(h, app_env, weights):
    at = h.open_page()
    _add(h, at, "my-resnet", "timm/test_resnet", weights / "resnet.pth", 32)
    assert any("Added **my-resnet**" in s.value and "Grad-CAM layer `layer4`" in s.value for s in at.success), \
        [s.value for s in at.success] + [e.value for e in at.error]
    assert any("head fc replaced" in i.value and "1000 classes" in i.value for i in at.info)
    _add(h, at, "my-vit", "timm/test_vit", weights / "vit.safetensors", 32)
    assert any("Added **my-vit**" in s.value and "blocks.5.norm1" in s.value for s in at.success)
    assert {m.label: m.value for m in at.metric}["Trained models found"] == "5"
    assert (app_env / "runs" / "my-vit" / "model.safetensors").is_file()
    # a bad field gives a one-line message, not a traceback
    _add(h, at, "bad", "timm/no_such_net", weights / "vit.safetensors", 32)
    assert any("unknown timm architecture 'no_such_net'" in e.value for e in at.error)

    # Explore with the two imported models: overlays for both methods, and a named Grad-CAM layer
    keys = [k for k in at.sidebar.multiselect(key="sidebar.runs").options if "my-" in k]
    assert len(keys) == 2
    at.sidebar.multiselect(key="sidebar.runs").set_value(keys).run()
    at.switch_page("pages/explore.py").run()
    h.assert_clean(at)
    assert len(_overlays(at)) == 2 * 2
    box = at.selectbox(key="explore.cam_layer")
    assert box.value == "" and "blocks.2.norm1" in box.options and "layer3" in box.options
    before = _vit_gradcam(at)
    box.set_value("blocks.2.norm1").run()
    h.assert_clean(at)
    assert len(_overlays(at)) == 4 and _vit_gradcam(at) != before  # the ViT's Grad-CAM map changed
    assert any("No module `blocks.2.norm1` in" in c.value and "my-resnet" in c.value for c in at.caption)

    at.switch_page("pages/metrics.py").run()
    at.number_input(key="metrics.limit").set_value(6).run()
    at.button(key="metrics.compute").click().run()
    h.assert_clean(at)
    values = at.dataframe[-1].value  # the Values table: a column per model
    assert len([c for c in values.columns if "my-" in c]) == 2

    at.switch_page("pages/consistency.py").run()  # background attack + Grad-CAM heatmaps on the ViT too
    h.assert_clean(at)
    assert at.image
    at.switch_page("pages/train.py").run()
    h.assert_clean(at)
    at.switch_page("pages/slide.py").run()
    h.assert_clean(at)
    at.switch_page("pages/report.py").run()
    at.number_input(key="report.limit").set_value(6).run()
    at.button(key="report.build").click().run()
    h.assert_clean(at)
    assert any("Report ready" in s.value for s in at.success)
