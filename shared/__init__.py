"""The app's core: settings, credentials and the token session, the completion
client, request validation and errors. ``function_app.py`` maps triggers onto it."""
