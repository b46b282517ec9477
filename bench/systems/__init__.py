"""Systems the report measures beside the service: the naive FastAPI server (D) and infinity's launcher (F)."""
