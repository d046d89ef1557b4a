"""The pure MQTT layer: YAML dialect profiles and the mapper from messages to points."""

from edge.mqtt.mapper import Mapped, MapError, device_id_of, map_message, match_topic
from edge.mqtt.profile import MqttProfile, load_mqtt_profile

__all__ = ["Mapped", "MapError", "MqttProfile", "device_id_of", "load_mqtt_profile", "map_message",
           "match_topic"]
