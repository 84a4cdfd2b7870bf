"""The HTTP frame both sides of the API share: services and the caller, sign-in, auth, access and masking, problem+json, limits, metrics."""
