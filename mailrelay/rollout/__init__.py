"""Provider rollouts: move senders to a provider gradually, and back at once.

- ``policy``: a rollout's settings, their defaults and checks, the provider error codes;
- ``bucket``: a sender's stable, salted bucket 0-9999;
- ``gate``: intake's routing decision (admitted, through the fallback, or refused), from
  rollout rows cached in the process for at most 10 s;
- ``decide``: the controller's pure decision function (promote, warn, rollback, hold,
  complete) over what Prometheus measured;
- ``measure``: the Prometheus HTTP API queries;
- ``controller``: one evaluation of each rollout, applied as a conditional update;
- ``reroute``: after a rollback, waiting messages that never reached the provider move to
  the fallback;
- ``manage``: operator changes (set, pause, resume, rollback, remove).

Below tasks and the CLI, above providers and the store.
"""
