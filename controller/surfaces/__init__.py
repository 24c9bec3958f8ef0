"""The surfaces, peers of each other: the HTTP API (with footage over HTTP), Prometheus metrics
and sd_notify. Each reads the status snapshot and the event stream and posts commands; none
touches the Unit."""
