"""What callers send and get: request bodies, their validation, response shapes."""
