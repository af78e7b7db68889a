"""Speed of the metrics and of batched attribution, measured side by side on identical inputs.

    .venv/bin/python bench/metrics_speed.py [--run RUN] [--n-images 64] [--size 64] [--n-steps 48]

1. Deletion AUC: ``interp_core.metrics.deletion_auc`` against Quantus ``PixelFlipping`` with the
   same number of model evaluations per image. Quantus broadcasts a ``[B,1,H,W]`` map to the
   image's 3 channels and counts ``features_in_step`` in channel values, which must divide ``H*W``;
   so ``features_in_step = 3*H*W / n_steps`` gives ``n_steps`` steps, and ``n_steps`` must be a
   multiple of 3 (default 48 = 3 * 16). Both use a black baseline and softmax probabilities; the
   curves are compared as a sanity check (they differ slightly: Quantus' chunks split pixels
   between channels and its curve has no step-0 point).
2. The pure-attribution metrics (Sparseness, PointingGame, RelevanceMassAccuracy,
   RelevanceRankAccuracy) against Quantus on the same maps and masks.
3. ``interp_core.attribution.attribute(model, x, method)`` batched against a per-image loop of the
   Captum class called directly (``--methods``, default saliency, integrated_gradients, gradcam,
   occlusion; ``--attribution-images`` of them). Captum already batches IG's steps within one
   image, so only the per-image overhead differs for the gradient methods; occlusion's per-image
   loop runs one forward per window position (Captum's ``perturbations_per_eval=1`` default) where
   ours stacks windows and images into large passes.

Prints a table and the ratios (Quantus or loop time / ours; higher means we are faster).
Targets from the issue: metrics >= 10x, batched attribution >= 5x, on the CPU.

Reading the deletion ratio: Quantus 0.6 ``PixelFlipping`` already runs one forward pass of the
whole batch per step, so both sides evaluate the model on the same ``B * n_steps`` images and
the ratio is bounded by the forward cost (ours adds the ``j = 0`` point and gains from
channels-last slices). ``--quantus-per-image`` times Quantus with ``batch_size=1``, the
per-image regime of older Quantus versions.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interp_core import metrics as M  # noqa: E402
from interp_core._utils.device import pick_device, torch_threads  # noqa: E402
from interp_core.models import create_model  # noqa: E402


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls and the last result (``main`` warms the model up first)."""
    best, out = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def build_inputs(args: argparse.Namespace, device: torch.device):
    if args.run:
        from interp_core.runs import load_run
        model = load_run(args.run, device).model
    else:
        torch.manual_seed(args.seed)
        model = create_model("smallcnn", 2).to(device).eval()
    g = torch.Generator().manual_seed(args.seed)
    s = args.size
    # smooth random "tiles": upsampled noise, so the maps and masks have some structure
    x = torch.nn.functional.interpolate(torch.rand(args.n_images, 3, s // 8, s // 8, generator=g), size=(s, s),
                                        mode="bilinear", align_corners=False).clamp(0, 1).to(device)
    with torch.no_grad():
        target = model(x).argmax(1)
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    c = torch.randint(s // 4, 3 * s // 4, (2, args.n_images, 1, 1), generator=g)
    mask = ((yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= (s // 5) ** 2).to(device)
    return model, x, target, mask


def saliency_maps(model, x, target) -> torch.Tensor:
    try:
        from interp_core.attribution import attribute
    except ImportError:
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
        return g.abs().sum(1)
    return attribute(model, x, "saliency", target=target)


def bench_deletion(model, x, target, a, args) -> dict:
    import quantus

    b, _, h, w = x.shape
    if (3 * h * w) % args.n_steps or (h * w) % (3 * h * w // args.n_steps):
        raise SystemExit(f"--n-steps {args.n_steps}: Quantus needs 3*H*W/n_steps to divide H*W (use a multiple of 3 "
                         f"dividing 3*H*W, e.g. 48)")
    ours_t, ours = timed(lambda: M.deletion_auc(model, x, a, target, n_steps=args.n_steps, baseline="zero"),
                         args.repeats)
    metric = quantus.PixelFlipping(features_in_step=3 * h * w // args.n_steps, perturb_baseline="black",
                                   abs=False, normalise=False, disable_warnings=True, display_progressbar=False)
    x_np, y_np, a_np = x.cpu().numpy(), target.cpu().numpy(), a[:, None].cpu().numpy()
    q_t, q_curves = timed(lambda: metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np.copy(), softmax=True,
                                         device=str(x.device), batch_size=b), args.repeats)
    q = np.asarray(q_curves)
    diff = float(np.abs(q - ours.curve[:, 1:].cpu().numpy()).max())
    rows = [{"name": f"deletion ({args.n_steps} steps)", "ours": ours_t, "reference": q_t,
             "ref_name": "Quantus PixelFlipping", "check": f"max |curve diff| {diff:.3f} (steps {q.shape[1]} vs "
                                                           f"{ours.curve.shape[1] - 1})"}]
    if args.quantus_per_image:
        q1_t, _ = timed(lambda: metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np.copy(), softmax=True,
                                       device=str(x.device), batch_size=1), 1)
        rows.append({"name": "deletion, reference per image", "ours": ours_t, "reference": q1_t,
                     "ref_name": "Quantus PixelFlipping batch_size=1", "check": "-"})
    return rows


def bench_pure(x, target, a, mask, args) -> list[dict]:
    import quantus

    b = x.shape[0]
    # per-sample max-normalised (all four metrics are scale-invariant), so Quantus' +1e-7 in
    # Sparseness is negligible and the check column compares like with like
    a = a / a.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1)
    x_np, y_np = x.cpu().numpy(), target.cpu().numpy()
    a_np, s_np = a[:, None].cpu().double().numpy(), mask[:, None].float().cpu().numpy()
    cases = [("sparseness", M.sparseness, quantus.Sparseness(abs=True, normalise=False, disable_warnings=True), False),
             ("pointing_game", M.pointing_game, quantus.PointingGame(normalise=False, disable_warnings=True), True),
             ("relevance_mass_accuracy", M.relevance_mass_accuracy,
              quantus.RelevanceMassAccuracy(normalise=False, disable_warnings=True), True),
             ("relevance_rank_accuracy", M.relevance_rank_accuracy,
              quantus.RelevanceRankAccuracy(normalise=False, disable_warnings=True), True)]
    rows = []
    for name, ours_fn, q_metric, needs_mask in cases:
        ours_t, ours = timed((lambda f=ours_fn, m=needs_mask: f(a, mask) if m else f(a)), args.repeats)
        q_t, q = timed(lambda qm=q_metric, m=needs_mask: qm(model=None, x_batch=x_np, y_batch=y_np, a_batch=a_np.copy(),
                                                           s_batch=s_np if m else None, batch_size=b), args.repeats)
        diff = float(np.nanmax(np.abs(np.asarray(q, dtype=np.float64) - ours.double().cpu().numpy())))
        rows.append({"name": name, "ours": ours_t, "reference": q_t, "ref_name": "Quantus",
                     "check": f"max |diff| {diff:.1e}"})
    return rows


def _captum_per_image(method: str, model, x1: torch.Tensor, t: int) -> torch.Tensor:
    """One image through Captum as a user would write it: the method's class called directly, with
    the same settings as our defaults (IG 32 Gauss-Legendre steps from black; occlusion 8x8 windows,
    stride 4, black; Grad-CAM on ``model.cam_layer``), other arguments at Captum's defaults."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency

    x1 = x1.clone().requires_grad_(True)
    if method == "saliency":
        return Saliency(model).attribute(x1, target=t, abs=True).sum(1)
    if method == "integrated_gradients":
        return IntegratedGradients(model).attribute(x1, baselines=0.0, target=t, n_steps=32,
                                                    method="gausslegendre").abs().sum(1)
    if method == "occlusion":
        with torch.no_grad():
            return Occlusion(model).attribute(x1.detach(), sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4),
                                              baselines=0.0, target=t)[:, 0]
    if method == "gradcam":
        cam = LayerGradCam(model, model.cam_layer).attribute(x1, target=t, relu_attributions=True)
        return LayerAttribution.interpolate(cam, x1.shape[-2:], interpolate_mode="bilinear")[:, 0]
    raise SystemExit(f"--methods: no per-image Captum reference for {method!r}")


def bench_attribution(model, x, target, args) -> list[dict]:
    """``attribute(model, x, method)`` on the whole batch against a per-image Captum loop, per method."""
    from interp_core.attribution import attribute

    rows = []
    for method in args.methods:
        xs, ts = x[:args.attribution_images], target[:args.attribution_images]
        kw = {"window": 8, "stride": 4} if method == "occlusion" else {}

        def loop(method=method, xs=xs, ts=ts) -> torch.Tensor:
            return torch.cat([_captum_per_image(method, model, xs[i:i + 1], int(ts[i])) for i in range(len(xs))])

        signed = method == "occlusion"
        ours_t, ours = timed(lambda m=method, kw=kw: attribute(model, xs, m, target=ts, signed=signed, **kw),
                             args.repeats)
        loop_t, ref = timed(loop, args.repeats)
        # relative L2 difference: max-pool ties can route single gradients differently in batch vs single runs
        diff = float((ours - ref.detach()).norm() / ref.detach().norm().clamp_min(1e-12))
        rows.append({"name": f"{method}, {len(xs)} images", "ours": ours_t, "reference": loop_t,
                     "ref_name": "Captum per image", "check": f"relative L2 diff {diff:.1e}"})
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", help="a run directory to load the model from (default: random smallcnn)")
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-steps", type=int, default=48, help="deletion steps; a multiple of 3 (see the docstring)")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per measurement (best is kept)")
    p.add_argument("--quantus-per-image", action="store_true",
                   help="also time Quantus PixelFlipping with batch_size=1 (the per-image regime; slow)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for both sides (default 1: on a shared machine more threads make "
                        "small ops wait for busy cores and the timings noisy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", nargs="+", default=["saliency", "integrated_gradients", "gradcam", "occlusion"],
                   help="attribution methods to time against a per-image Captum loop")
    p.add_argument("--attribution-images", type=int, default=32,
                   help="images for the attribution comparison (the per-image occlusion loop is slow)")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    with torch_threads(args.threads):
        model, x, target, mask = build_inputs(args, device)
        a = saliency_maps(model, x, target)  # also warms up forward and backward
        rows = [*bench_deletion(model, x, target, a, args), *bench_pure(x, target, a, mask, args),
                *bench_attribution(model, x, target, args)]
        n_threads = torch.get_num_threads()
    print(f"device {device}, {n_threads} threads, {args.n_images} images {args.size}x{args.size}, "
          f"model {'run ' + args.run if args.run else 'smallcnn (random init)'}")
    print(f"{'measurement':34s} {'ours [s]':>9s} {'reference [s]':>13s} {'ratio':>7s}  reference / check")
    for r in rows:
        ratio = r["reference"] / r["ours"]
        print(f"{r['name']:34s} {r['ours']:9.4f} {r['reference']:13.4f} {ratio:6.1f}x  {r['ref_name']}; {r['check']}")
    dele = rows[0]
    print(f"deletion AUC speed-up over Quantus PixelFlipping: {dele['reference'] / dele['ours']:.1f}x (target >= 10x)")
    for r in rows[-len(args.methods):]:
        print(f"batched {r['name'].split(',')[0]} speed-up over a per-image Captum loop: "
              f"{r['reference'] / r['ours']:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
