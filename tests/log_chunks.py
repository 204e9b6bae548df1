"""``Driver(chunk_seconds=ONE_LOG_CHUNK)``: each advance of a trial is one ``log_every`` chunk.

An advance stops at the first log boundary past its deadline, so with a deadline already past
every advance steps ``log_every`` steps and returns: reports, checkpoints (every
``checkpoint_every`` steps) and driver hooks then come before the trial's end however fast the
machine steps. A chunk of seconds does not: on a fast machine one 0.02 s advance ran 600 steps,
a whole trial, so a hook waiting for a checkpoint before the end never fired."""

ONE_LOG_CHUNK = 1e-9
