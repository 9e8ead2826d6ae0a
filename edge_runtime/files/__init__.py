"""Files: reading scans (images and DICOM), durable writes, and pairing labelled images with their masks."""
