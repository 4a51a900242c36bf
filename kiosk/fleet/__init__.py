"""Fleet management over MQTT (protocol.md §5): state, info, health, events, remote config, commands."""
