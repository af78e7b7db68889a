"""Explanation consistency (METHODS.md section 3): the background-only attack (``perturb``), the
score ``E = sim(H(x), H(x_hat))`` over a sample and a dataset (``score``), and the per-sample
history file an ``ece`` run writes and the dashboard reads (``history``)."""
