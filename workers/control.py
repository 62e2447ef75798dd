from mailrelay.worker_profiles import WorkerProfile

PROFILE = WorkerProfile(
    name="control",
    queues=("mailrelay.control",),
    pool="solo",
    concurrency=1,
    why="beat's periodic jobs: one at a time, in order",
)
