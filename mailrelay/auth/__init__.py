"""Account secrets and access tokens: encryption at rest, the token cache, refresh locks."""
