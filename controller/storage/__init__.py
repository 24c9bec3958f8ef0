"""The storage lifecycle: hourly merge, retention, the disk monitor, and the housekeeping thread
that runs them off the recording path."""
