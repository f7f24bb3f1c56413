"""Calls: one gateway-neutral runner, the Twilio and SIP adapters, admission, recording, turn-taking."""
