"""Gateway: the only public API (``POST /predict``, ``POST /progression``), cache and access control."""
