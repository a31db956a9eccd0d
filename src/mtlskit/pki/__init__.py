"""Keys, names, profiles and the private CA. Never opens sockets."""
