"""tether: run research experiments where they are cheapest and safest, without losing a result or a dollar."""

__version__ = "0.1.0"
