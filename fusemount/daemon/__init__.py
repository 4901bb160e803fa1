"""The running daemon: serve loop, metrics gauges, sd_notify, busy_poll (SPEC 2, 7)."""
