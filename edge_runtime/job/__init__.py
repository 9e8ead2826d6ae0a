"""A conversion job: its settings, which scans need work, the ledger, processing a batch and spreading batches."""
