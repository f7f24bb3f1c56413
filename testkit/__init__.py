"""Test support shared by the tests (`tests/`) and the benchmarks (`bench/`).

Installed with the project (`pip install -e .`), imported like any package:

- `testkit.audio`: synthetic caller speech (espeak-ng + sox as a phone line carries it), tiny.en
  transcription of what the bot said, G.711 μ-law, WAV files, answer matching.
- `testkit.twilio_caller`: a Twilio Media Streams client playing Twilio and the caller
  (`TwilioCall`); `testkit.twilio_replies`: what it records (replies, frames, events).
- `testkit.sip_peers`: real SIP peers (sipp, baresip, linphonec) and RTP helpers.
- `testkit.sip_requests`: the one builder of hand-written SIP requests (and SDP offers).
- `testkit.server`: the real server as a subprocess (`start_server`, `ServerProcess`,
  `serve_for_tests`), the test server's settings, the traceback check of server logs.
- `testkit.cli`: `python run.py ...` against a data dir (`run_cli_in`, `CliRunner`).
- `testkit.net`: free loopback ports, UDP bind checks, a proxy-free HTTP GET.
- `testkit.procs`: bounded child processes (process groups, SIGTERM then SIGKILL).
- `testkit.redis_server`: a throwaway Debian `redis-server` on a free port.

Fixtures live in `tests/conftest.py`; nothing here is a fixture.
"""
