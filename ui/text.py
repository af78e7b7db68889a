"""Plain-language texts shown to clinicians (one place, so the pages stay short and consistent)."""
from __future__ import annotations

WHAT_IS_SALIENCY = (
    "A **saliency map** (also called a heatmap or attribution map) colours every pixel of a tile by how much "
    "it influenced the model's answer: warm colours mark the pixels the decision rests on, dark or cool "
    "colours the pixels it ignored. A useful map points at the tissue a pathologist would look at "
    "(for example the tumour cells) and not at background, pen marks or scanner artefacts."
)

WHAT_THE_TOOL_DOES = (
    "This dashboard lets you **look inside image classifiers for pathology tiles**: what each model "
    "predicts, *where* it looks when it does so, and whether retraining it with an interpretability-aware "
    "method gives cleaner, more trustworthy maps without losing accuracy.\n\n"
    "- **Baseline (ERM)**: a model trained the usual way.\n"
    "- **SCAAT** (saliency-constrained adversarial training): retrains the model while adding tiny, "
    "invisible noise to the pixels it considers unimportant, so its maps become sparser and more faithful.\n"
    "- **ECE** (explanation-consistency reweighting): retrains while giving more weight to tiles whose "
    "explanation changes when only their background is disturbed.\n"
    "- **SGT** (saliency-guided training): a published reference method that masks unimportant pixels.\n\n"
    "Nothing leaves this computer: models and images stay on disk here."
)

METRIC_HELP: dict[str, str] = {
    "sparseness": "How concentrated the map is (Gini index, 0 to 1). Higher means the model relies on a few "
                  "pixels instead of spreading its attention everywhere.",
    "pointing_game": "Whether the single strongest pixel of the map falls inside the region marked as evidence "
                     "(hit or miss). Only available when the dataset has masks.",
    "deletion_auc": "Remove the pixels the map calls most important, step by step, and watch the model's "
                    "confidence. A faithful map makes it drop fast: a lower area (0 to 1) is better.",
    "insertion_auc": "Start from a blurred tile and put back the most important pixels first. A faithful map "
                     "makes confidence rise fast: a higher area (0 to 1) is better.",
    "symmetric_relevance_gain": "Deletion twice: least important pixels first, then most important first; the "
                                "gain is the first area minus the second (-1 to 1). A faithful map keeps confidence "
                                "while unimportant pixels go and loses it fast when important ones go. Unlike "
                                "deletion AUC alone, it compares two different models fairly. Higher is better.",
    "accuracy": "Share of tiles the model classifies correctly (0 to 1). Higher is better.",
    "worst_group_accuracy": "Accuracy of the weakest group (for example tumour tiles without a pen mark). "
                            "Higher means the model does not lean on a shortcut.",
    "agree_accuracy": "Accuracy on tiles whose look (stain tint, pen mark) is the one their class has in most "
                      "training tiles. Higher is better.",
    "disagree_accuracy": "Accuracy on tiles whose look is the other class's usual one: the tiles a shortcut gets "
                         "wrong. Higher is better.",
    "agree_disagree_gap": "Agree minus disagree accuracy: how much the model leans on the look. Lower is better; "
                          "0 means no bias.",
    "complexity": "Entropy of the map: lower means a simpler, more focused explanation.",
    "relevance_mass_accuracy": "Share of the map's total weight inside the marked evidence (0 to 1). Higher is better.",
    "relevance_rank_accuracy": "Share of the map's top pixels inside the marked evidence (0 to 1). Higher is better.",
    "artifact_mass": "Share of the map lying on a known artefact such as a pen mark (0 to 1). Lower is better.",
    "explanation_consistency": "How similar the heatmap stays when only the background is disturbed (0 to 1). "
                               "Higher is better.",
}

CONSISTENCY_INTRO = (
    "**Explanation consistency** asks: if we change only the *background* of a tile (the pixels the model "
    "says it does not use) with a small, deliberately harmful perturbation, does the model's heatmap stay "
    "the same? A trustworthy model keeps both its answer and its heatmap. The score is the similarity of the "
    "two heatmaps, from 0 (completely different) to 1 (identical)."
)

NO_RUNS = ("No trained model was found. The shipped models live in `sample_data/runs/`; you can train one "
           "on the **Train** page.")
NO_DATASET = "No dataset was found. The shipped datasets live in `sample_data/data/`."
PICK_RUNS = "Choose one or more models in the sidebar (**Models to compare**)."


def scaat_effect_sentence(dataset: str, base: dict, scaat: dict) -> str | None:
    """One sentence on what SCAAT changed, from the stored ``evaluate`` results of a baseline and its
    SCAAT retrain (``{"metric": {"mean", ...}}``); None when a needed value is missing."""
    def mean(r: dict, k: str) -> float | None:
        v = r.get(k)
        return v.get("mean") if isinstance(v, dict) else None

    vals = {k: (mean(base, k), mean(scaat, k)) for k in
            ("sparseness", "relevance_mass_accuracy", "symmetric_relevance_gain", "accuracy")}
    if any(b is None or a is None for b, a in (vals["sparseness"], vals["accuracy"])):
        return None

    def pair(k: str) -> str:
        b, a = vals[k]
        return f"{a:.3f} vs {b:.3f} ({a - b:+.3f})"

    n = scaat.get("n_tiles")
    parts = [f"Gini sparseness {pair('sparseness')}"]
    if None not in vals["relevance_mass_accuracy"]:
        parts.append(f"share of the map on the lesion {pair('relevance_mass_accuracy')}")
    if None not in vals["symmetric_relevance_gain"]:
        parts.append(f"symmetric relevance gain {pair('symmetric_relevance_gain')}")
    return (f"Measured on the shipped `{dataset}` {scaat.get('split', 'test')} split"
            f"{f' ({n} tiles' if n else ' ('}{', ' + str(scaat.get('settings', {}).get('attribution', 'saliency'))} maps), "
            f"the SCAAT retrain against its baseline: {', '.join(parts)}; accuracy {pair('accuracy')}.")
