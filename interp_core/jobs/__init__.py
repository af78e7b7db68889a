"""Background work that outlives a page: the training queue (``queue``: one subprocess per run,
states on disk, cancel, vanished processes) and the process helpers it stands on."""
