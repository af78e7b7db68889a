"""Shared machinery, one implementation each: device choice, seeding and speed switches
(``device``), eval-mode context (``modes``), atomic file writes (``io``), file hashes
(``hashing``), ``flock`` locks (``locking``) and argument checks (``validation``)."""
