"""The management API (DRF) under /api/, described by OpenAPI at /api/schema/."""
