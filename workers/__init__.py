"""Worker profiles, one module per queue: queues, pool, concurrency, prefetch. No logic.

Run one with ``mailrelay worker --profile NAME``.
"""
