"""Drop-in integrations: the OpenAI and Anthropic SDK wrappers and an ASGI middleware.

Each is an optional extra (``registry[openai]``, ``registry[anthropic]``, ``registry[asgi]``);
importing this package needs none of them. What they share (the request's input-token
estimate and the model-key mapping) lives in :mod:`registry.integrations.common`.
"""
