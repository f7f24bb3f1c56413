"""The HTTP face of the server: the app, the REST API, API keys, Twilio webhooks."""
