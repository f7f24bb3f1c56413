"""What every SIP peer of the harness shares: where the tools are, loopback, and caller audio files."""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from testkit.net import HOST

__all__ = [
    "BARESIP_BIN",
    "DTMF_PCAPS",
    "G711A_PCAP",
    "HOST",
    "LINPHONEC_BIN",
    "PCAP_DIR",
    "RTP_EVENT_DIGITS",
    "SCENARIO_DIR",
    "SIPP_BIN",
    "QuestionAudio",
    "have_binaries",
    "make_question_audio",
    "wav_seconds",
]

SIPP_BIN = shutil.which("sipp") or "/usr/bin/sipp"
BARESIP_BIN = shutil.which("baresip") or "/usr/bin/baresip"
LINPHONEC_BIN = shutil.which("linphonec") or "/usr/bin/linphonec"
#: The sipp scenarios of the harness (README.md lists them).
SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
PCAP_DIR = Path("/usr/share/sip-tester")
G711A_PCAP = PCAP_DIR / "g711a.pcap"
#: RFC 2833 pcaps shipped with sipp: file name -> the one digit it carries (checked by the self-test).
DTMF_PCAPS: dict[str, Path] = {
    **{str(d): PCAP_DIR / f"dtmf_2833_{d}.pcap" for d in range(10)},
    "*": PCAP_DIR / "dtmf_2833_star.pcap",
    "#": PCAP_DIR / "dtmf_2833_pound.pcap",
}
RTP_EVENT_DIGITS = "0123456789*#ABCD"


def have_binaries(*names: str) -> bool:
    return all(shutil.which(n) for n in names)


@dataclass(frozen=True)
class QuestionAudio:
    wav: Path  # 8 kHz mono s16 WAV (what baresip's aufile needs), trailing silence included
    ulaw: Path  # raw 8 kHz mu-law, no header (what sipp's rtp_stream needs), speech only
    speech_s: float
    total_s: float


def make_question_audio(
    text: str, out_dir: Path, *, trailing_silence_s: float = 0.0, name: str = "q"
) -> QuestionAudio:
    """Speak ``text`` with espeak-ng; convert with sox to an 8 kHz WAV (+ silence) and raw mu-law."""
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"{name}.espeak.wav"
    wav = out_dir / f"{name}.8k.wav"
    ulaw = out_dir / f"{name}.ulaw"
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, timeout=30, capture_output=True)
    subprocess.run(
        ["sox", str(raw), "-r", "8000", "-c", "1", "-e", "mu-law", "-t", "raw", str(ulaw)],
        check=True, timeout=30, capture_output=True,
    )  # fmt: skip
    pad = ["pad", "0", f"{trailing_silence_s:.3f}"] if trailing_silence_s > 0 else []
    subprocess.run(
        ["sox", str(raw), "-r", "8000", "-c", "1", "-b", "16", "-e", "signed-integer", str(wav), *pad],
        check=True, timeout=30, capture_output=True,
    )  # fmt: skip
    speech_s = ulaw.stat().st_size / 8000
    return QuestionAudio(wav, ulaw, speech_s, speech_s + trailing_silence_s)


def wav_seconds(path: Path) -> float:
    """Duration of a PCM WAV by its header (data chunk size / byte rate)."""
    data = path.read_bytes()
    byte_rate = struct.unpack("<I", data[28:32])[0]
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if cid == b"data":
            size = min(size, len(data) - pos - 8)
            return size / byte_rate if byte_rate else 0.0
        pos += 8 + size
    return 0.0
