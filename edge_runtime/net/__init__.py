"""The daemon on a DICOM network: a storage SCP that receives scans, an outbox that sends results (pynetdicom)."""
