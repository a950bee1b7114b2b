#!/bin/sh
# Container image: maintainer scripts must not start services (there is no init to own them).
# The server image removes this file: there systemd is PID 1 and services do start.
exit 101
