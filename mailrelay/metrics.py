"""Every Prometheus metric mailrelay exports, declared once.

Labels are bounded: ``provider``, ``queue``, ``code``, ``result``, ``kind``; never an
address, a message id or an account.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INTAKE = Counter("mailrelay_intake_total", "Send requests taken in, by result and code",
                 ["result", "code"])
DELIVERIES = Counter("mailrelay_deliveries_total",
                     "Delivery attempts that ended, by provider, result and code",
                     ["provider", "result", "code"])
# Split by result: a failing provider often answers fast, and mixing its errors into the
# successful sends' quantiles would hide a slow one.
DELIVERY_SECONDS = Histogram(
    "mailrelay_delivery_seconds", "Time of one provider send, verification included, by result",
    ["provider", "result"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60))
TASK_SECONDS = Histogram("mailrelay_task_seconds", "Time of one task run", ["queue"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
TASK_RETRIES = Counter("mailrelay_task_retries_total",
                       "Tasks retried because a dependency of mailrelay failed", ["queue", "code"])
RECONCILED = Counter("mailrelay_reconciled_total",
                     "Messages the reconciler re-enqueued because no task would pick them up, "
                     "by what it found (lost_task, parked_retry, dead_lease)", ["kind"])
RECONCILE_RUNS = Counter("mailrelay_reconcile_runs_total",
                         "Reconciler runs, by result (ok, error)", ["result"])
RETENTION_REMOVED = Counter("mailrelay_retention_removed_total",
                            "What the retention job removed from the outbox, by kind "
                            "(payloads, messages, attempts, audit)", ["kind"])
NOTIFICATIONS = Counter("mailrelay_notifications_total",
                        "Outcome notification publishes, by result (published, failed) and the "
                        "failure's code", ["result", "code"])
LEASES_LOST = Counter("mailrelay_leases_lost_total",
                      "Attempts that ended after another worker took the message over",
                      ["provider"])
RATE_LIMITED = Counter("mailrelay_rate_limited_total",
                       "Sends the mailbox's rate limit held back (not attempts), by provider",
                       ["provider"])
RATE_LIMIT_WAIT = Histogram(
    "mailrelay_rate_limit_wait_seconds",
    "How long the mailbox's rate limit held a send back, by provider", ["provider"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))

# Tokens. ``kind`` says why a refresh ran: the cached token was missing or about to
# expire (expiring), or the provider refused it (rejected).
TOKEN_REFRESHES = Counter("mailrelay_token_refreshes_total",
                          "Access-token refreshes made, by provider and why", ["provider", "kind"])
TOKEN_REFRESH_FAILURES = Counter("mailrelay_token_refresh_failures_total",
                                 "Access-token refreshes that failed, by provider and error code",
                                 ["provider", "code"])
TOKEN_LOCK_WAIT = Histogram(
    "mailrelay_token_lock_wait_seconds",
    "Time a send waited for another process's token refresh, by provider", ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
ACCOUNT_STATE_CHANGES = Counter("mailrelay_account_state_changes_total",
                                "Accounts moved to a state, by provider and the new state",
                                ["provider", "state"])

HTML_REMOVED = Counter("mailrelay_html_removed_total",
                       "What sanitizing took out of producer HTML at intake, by kind",
                       ["kind"])
HTML_SANITIZED = Counter("mailrelay_html_sanitized_total",
                         "HTML bodies sanitized at intake, by whether anything was removed",
                         ["result"])

# Rollouts. Gauges name their multiprocess mode: a prefork worker's /metrics sums its
# children's files, and a gauge without a mode would show one series per pid.
ROLLOUT_GATE = Counter("mailrelay_rollout_gate_total",
                       "Intake decisions of a provider's rollout gate, by result "
                       "(admitted, fallback, gated)", ["provider", "result"])
ROLLOUT_DECISIONS = Counter("mailrelay_rollout_decisions_total",
                            "Rollout controller decisions, by provider and decision",
                            ["provider", "decision"])
# The value written last wins: the controller and every intake process refresh it from
# the database, and a dead child's stale file must not outvote them (max would keep a
# rolled-back 100%).
ROLLOUT_PERCENT = Gauge("mailrelay_rollout_percent",
                        "Share of the provider's senders its rollout admits, in percent",
                        ["provider"], multiprocess_mode="mostrecent")
# Time only moves forward, so the largest is the last evaluation, whichever process
# (or dead child) made it.
ROLLOUT_LAST_EVALUATION = Gauge("mailrelay_rollout_last_evaluation_timestamp_seconds",
                                "When the controller last evaluated the rollout (Unix time)",
                                ["provider"], multiprocess_mode="max")
ROLLOUT_NEEDS_ATTENTION = Gauge("mailrelay_rollout_needs_attention",
                                "1 when the rollout's Prometheus queries failed "
                                "consecutive_error_limit times in a row, else 0",
                                ["provider"], multiprocess_mode="mostrecent")
