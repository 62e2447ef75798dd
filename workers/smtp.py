from mailrelay.worker_profiles import WorkerProfile

PROFILE = WorkerProfile(
    name="smtp",
    queues=("mailrelay.smtp",),
    pool="prefork",
    # A send is a short SMTP conversation on the process's reused connection (one per
    # process, so 8 per server per worker); 8 processes keep 2 cores busy. Prefork: a child
    # killed mid-send loses only its task, which reject_on_worker_lost requeues.
    concurrency=8,
    prefetch_multiplier=1,
    why="deliveries through SMTP servers",
)
