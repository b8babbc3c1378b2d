"""The running processes: thin loops that poll, call streamlearn, produce, checkpoint, commit."""
