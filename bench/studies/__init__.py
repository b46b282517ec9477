"""Studies of one question each, apart from the report: A/B of two checkouts, abuse cases,
process pools, several models per process."""
