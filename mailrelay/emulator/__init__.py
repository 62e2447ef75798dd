"""The provider emulator: an HTTPS server speaking Google's (later Microsoft's) wire formats.

There is no internet where mailrelay is developed and tested, so the adapters are pointed
at this server through their base URLs. ``start()`` runs it in a background thread;
``mailrelay emulator`` runs it in the foreground.
"""

from __future__ import annotations

from mailrelay.emulator.client import EmulatorClient
from mailrelay.emulator.server import Emulator, start

__all__ = ["Emulator", "EmulatorClient", "start"]
