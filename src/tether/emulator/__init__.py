"""Local emulators of the services tether talks to; :mod:`tether.emulator.vast` emulates Vast.ai."""

from tether.emulator.vast import Clock, Faults, NullHost, VastEmulator, load_offer_book, sshd_host_factory

__all__ = ["Clock", "Faults", "NullHost", "VastEmulator", "load_offer_book", "sshd_host_factory"]
