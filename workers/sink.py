from mailrelay.worker_profiles import WorkerProfile

PROFILE = WorkerProfile(
    name="sink",
    queues=("mailrelay.sink",),
    pool="prefork",
    # Delivery waits on the network; 8 processes keep 2 cores busy. Prefork, not threads:
    # a child killed mid-send takes only its own task, which reject_on_worker_lost requeues.
    concurrency=8,
    prefetch_multiplier=1,
    why="deliveries through the sink provider (tests, benchmarks, demo)",
)
