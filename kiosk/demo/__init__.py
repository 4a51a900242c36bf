"""`kiosk demo`: the whole system on one machine, with an embedded MQTT broker when needed."""
