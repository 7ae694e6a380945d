"""Matters: turn frames + binary masks into alpha mattes (VideoMaMa on GPU, CPU matters, baseline)."""
