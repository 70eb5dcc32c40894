"""Usage rollups: the usage events summed per organization x key x model x hour and day (the
UsageRollup model). maintenance.py writes them (with the events, and `rebuild_rollups`);
selectors.py reads them (GET /v1/usage, /api/usage, the dashboard); buckets.py holds the time
and latency buckets both share."""
