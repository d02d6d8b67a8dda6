"""The system: the supervisor, the process shells around agent objects, serial mode, telemetry and progress."""
