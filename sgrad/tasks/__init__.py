"""Sequence tasks for recurrent DNI: each yields fixed-shape windows of a stream, chunk by chunk."""
