"""Tasks: one file per task (reader, encoding, head, loss, decoding, metrics), found by name in `TASKS`."""
