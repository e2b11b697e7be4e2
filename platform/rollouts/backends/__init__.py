"""Where policy versions are served during a rollout: local processes or KServe InferenceServices."""
