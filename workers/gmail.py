from mailrelay.worker_profiles import WorkerProfile

PROFILE = WorkerProfile(
    name="gmail",
    queues=("mailrelay.gmail",),
    pool="prefork",
    # Each send waits ~100-500 ms on Google; 8 processes keep 2 cores busy. Prefork: a
    # child killed mid-send loses only its task, which reject_on_worker_lost requeues.
    concurrency=8,
    prefetch_multiplier=1,
    why="deliveries through the Gmail API",
)
