"""The TP Capital poller: channel posts → trading signals, each message exactly once."""
