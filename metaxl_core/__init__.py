"""MetaXL core."""
