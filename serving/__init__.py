"""Policy serving: the engine, the KServe predictor and the openpi websocket endpoint."""
