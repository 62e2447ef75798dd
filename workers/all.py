from mailrelay.worker_profiles import WorkerProfile

PROFILE = WorkerProfile(
    name="all",
    queues=("mailrelay.intake", "mailrelay.gmail", "mailrelay.microsoft", "mailrelay.sink",
            "mailrelay.smtp", "mailrelay.control"),
    pool="prefork",
    concurrency=4,
    why="every queue in one worker, for the demo and small installations",
)
