"""Evaluation of a run on a dataset: predictions, attribution maps (one image, or a whole split in
resumable shards), the explanation-quality metric loop, the evaluation cache and the verdict that
compares a retrained model with its reference."""
