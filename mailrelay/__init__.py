"""mailrelay: a Celery relay that sends email through users' own mailboxes."""

__version__ = "0.1.0"
