"""What the running service owns: its models (folders, sessions, batchers), admission and drain, metrics and
logs, and the pool of processes."""
