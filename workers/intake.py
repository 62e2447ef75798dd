from mailrelay.worker_profiles import WorkerProfile

PROFILE = WorkerProfile(
    name="intake",
    queues=("mailrelay.intake",),
    pool="prefork",
    concurrency=4,
    why="validation and one insert per request: short, database-bound tasks",
)
