"""Running services on this host: commands, managed processes, health checks."""
