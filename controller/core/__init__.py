"""The core: the controller loop that owns the machine, its status snapshot and event stream,
the error ledger, the health score and the alert ring."""
