"""The model catalog: storage codec, local snapshot, search and the write/read flows."""
