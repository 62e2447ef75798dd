from mailrelay.worker_profiles import WorkerProfile

PROFILE = WorkerProfile(
    name="microsoft",
    queues=("mailrelay.microsoft",),
    pool="prefork",
    # I/O-bound like Gmail; Graph allows 4 requests in flight per mailbox, enforced across
    # workers by a Redis semaphore, so more processes help only with many mailboxes.
    concurrency=8,
    prefetch_multiplier=1,
    why="deliveries through Microsoft Graph",
)
