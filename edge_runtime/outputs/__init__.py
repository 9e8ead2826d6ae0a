"""What a run writes for each scan: where (the layout) and how (masks, overlays, findings reports)."""
