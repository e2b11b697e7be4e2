"""The World Action Model: a DreamZero-style video-diffusion transformer that predicts video and actions."""
