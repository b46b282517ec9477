"""The tasks: what each one is (specs, read by the exporter and the tests too), the interface every task implements
(base), and one module per task; the registry builds them at start-up."""
