"""lorakit."""
