"""Where samples go: the InfluxDB writer, the durable spool in front of it, and the dead-letter file."""
