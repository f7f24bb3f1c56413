"""Built-in control intents: human, goodbye, repeat, start_over, wait, no, yes, thanks.

They need no training: they are rules over the normalised transcript, written for what ASR
produces ("uh yeah sure", "bye bye", "can you say that again"). They run before any trained model
(`voicebot.nlu.intents`) because they steer the call itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BUILTIN_INTENTS = ("human", "goodbye", "repeat", "start_over", "wait", "no", "yes", "thanks")


@dataclass(frozen=True)
class IntentResult:
    name: str  # "" when nothing matched confidently
    confidence: float  # 0..1
    source: str  # "builtin" | "model" | "none"


NO_INTENT = IntentResult("", 0.0, "none")

# Assent noises, before the hesitation filter would take "mm" and "uh" out of them.
_ASSENT_NOISES = re.compile(r"\b(?:mm+[ -]?hmm+|m+hm+|uh[ -]huh|yeah yeah)\b")
_FILLERS = re.compile(r"\b(?:u+h+|u+m+|uhm+|e+r+m*|h+m+|a+h+|o+h+|mm+)\b")
# Phrases that mean "okay" although they start with "no"; rewritten before the no/yes rules look.
_NOT_NO = re.compile(r"\bno (?:problem|worries|bother)\b")

_PEOPLE = (
    r"(?:a |an |the |some |your |real |live |actual |human |customer service |customer support )*"
    r"(?:human(?: being)?|person|people|agent|representative|rep|operator|somebody|someone|"
    r"manager|supervisor|advisor|adviser)"
)
_HUMAN = re.compile(
    rf"\b(?:speak|talk|chat)(?:ing)?\s+(?:to|with)\s+{_PEOPLE}\b"
    rf"|\b(?:connect|transfer|put)\s+me\s+(?:to|with|through\s+to|through)\s+{_PEOPLE}\b"
    rf"|\b(?:want|need|get|like|give|find)\s+(?:me\s+)?(?:to\s+(?:speak|talk)\s+to\s+)?{_PEOPLE}\b"
    r"|\b(?:human|operator|representative|customer service|real person|live agent|live person)\b"
    r"|^(?:an?\s+)?agent(?:\s+please)?$"
)
# A negation or a question about the bot shortly before a match cancels it: "I don't want a human",
# "are you a real person".
_HUMAN_CANCEL = re.compile(
    r"\b(?:don't|dont|do not|doesn't|does not|didn't|did not|not|never|no need|without|are you|"
    r"is this|am i|is that|you're not|you are not)\b"
)
_NEGATION_WINDOW_WORDS = 4

_GOODBYE = re.compile(
    r"\b(?:good ?bye|bye(?: bye)*|bye now|see (?:you|ya)(?: later)?|talk (?:to you )?later|take care|"
    r"have an? (?:nice|good|great|lovely) (?:day|one|evening|night|afternoon|weekend)|"
    r"(?:you can |please )?hang up(?: now)?|"
    r"that(?:'s| is| will be|'ll be) (?:all|everything)(?: for (?:now|today))?|"
    r"that's it for (?:now|today)|nothing else|i'm done|i am done|we're done|no more questions)\b"
)
_REPEAT = re.compile(
    r"\b(?:say|said) (?:that|it|this|again)(?: again| one more time)?\b"
    r"|\brepeat(?: that| this| it| yourself| again| please|"
    r" the (?:question|last part|answer|number|message))?$"
    r"|\b(?:can|could|would|will) you (?:please )?repeat\b"
    r"|\bcome again\b|\bpardon(?: me)?\b|\bone more time\b|\bsay again\b|\bi missed (?:that|it)\b"
    r"|\b(?:didn't|did not|couldn't|could not|can't|cannot) (?:quite )?(?:catch|hear|understand) "
    r"(?:that|you|it|what you said)\b"
    r"|\bwhat (?:did|was) (?:you|that)(?: just)?(?: say| said)?$|\bwhat was that\b"
    r"|^(?:(?:sorry|wait|oh|i'm sorry) )*(?:what|huh|eh|excuse me|sorry)$"
)
_START_OVER = re.compile(
    r"\b(?:start|begin)(?:ing)? (?:(?:this|the|it) (?:call |conversation )?)?(?:all )?(?:over|again|afresh)\b"
    r"|\b(?:start|go back to|back to|from) (?:the )?(?:very )?(?:beginning|start|top|main menu)\b"
    r"|\bmain menu\b|^restart(?: (?:the|this) (?:call|conversation))?$|\bstart from scratch\b"
)

# Intents that stand for the whole utterance: the phrase, plus at most a few leftover words.
_YES_STRONG = (
    r"yes|yeah|yea|yep|yup|ya|yah|sure|of course|certainly|absolutely|definitely|exactly|correct|"
    r"affirmative|uh huh|mm hmm|mhm|uh-huh|mm-hmm|please do|go ahead|go for it|sounds good|"
    r"that's right|that is right|that's correct|that is correct|that's it|that's the one|"
    r"i do|i did|it is|i am|i would|i guess so|i think so|why not|yes please|right"
)
_YES_WEAK = r"ok|okay|k|alright|all right|fine|cool|great|perfect|very good|that's good|sounds fine|very well"
_NO = (
    r"no|nope|nah|no way|not really|not now|not at all|negative|i don't think so|i do not think so|"
    r"no it isn't|no it's not|that's wrong|that is wrong|that's not right|that is not right|"
    r"that's incorrect|that is incorrect|"
    r"i don't|i do not|i didn't|i'm not|i am not|never mind|nevermind|don't bother|not today"
)
_THANKS = r"thanks|thank you|thank you very much|thanks a lot|thanks so much|many thanks|cheers|" + (
    r"much appreciated|appreciate it|i appreciate it|appreciate that|ta"
)
_WAIT = (
    r"wait|hold on|hang on|hold up|hold please|hold the line|one (?:moment|sec|second|minute|min)|"
    r"(?:just|wait|give me|gimme) an? (?:moment|sec|second|minute|min|bit)|a moment|"
    r"let me (?:check|see|look|find|get|grab|think)|bear with me|just a tick|hang tight|"
    r"(?:a )?(?:moment|second|sec|minute) please|a (?:second|sec|minute|bit)"
)
# Words that may ride along with any of those without changing what they mean.
_SOFT = (
    r"please|then|so|well|just|really|sir|ma'am|madam|now|oh|ah|actually|and|but|thanks|thank you|"
    r"very much|a lot|that's|that is|it|for that"
)


def _phrase_set(alternatives: str) -> re.Pattern[str]:
    return re.compile(rf"\b(?:{alternatives})\b")


_NO_THEN_NEGATION = re.compile(r"^(?:no|nope|nah)\b.*\b(?:don't|do not|not|isn't|wasn't|never)\b")
_SHORT_INTENTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("wait", _phrase_set(_WAIT)),
    ("no", _phrase_set(_NO)),
    ("yes", _phrase_set(f"{_YES_STRONG}|{_YES_WEAK}")),
    ("thanks", _phrase_set(_THANKS)),
)
_YES_STRONG_RE = _phrase_set(_YES_STRONG)
_SOFT_RE = _phrase_set(_SOFT)
_MAX_LEFTOVER_WORDS = 1


def normalize(text: str) -> str:
    """Lower case, plain apostrophes, no punctuation or hesitations, single spaces."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"[^\w\s'-]", " ", text)
    text = re.sub(r"(?<!\w)['-]|['-](?!\w)", " ", text)  # keep "don't" and "uh-huh", drop stray quotes
    text = _ASSENT_NOISES.sub(" yes ", text)
    text = _FILLERS.sub(" ", text)
    return " ".join(text.split())


def asks_for_human(text: str) -> bool:
    """True when the caller asks to be put through to a person (and does not say they don't want one)."""
    return _matches_unnegated(_HUMAN, normalize(text))


def _matches_unnegated(pattern: re.Pattern[str], text: str) -> bool:
    for match in pattern.finditer(text):
        before = text[: match.start()].split()[-_NEGATION_WINDOW_WORDS:]
        if not _HUMAN_CANCEL.search(" ".join(before)):
            return True
    return False


def builtin_intent(text: str) -> IntentResult:
    """The control intent in `text`, or NO_INTENT. Earlier intents in BUILTIN_INTENTS win ties."""
    norm = _NOT_NO.sub("okay", normalize(text))
    if not norm:
        return NO_INTENT
    if _matches_unnegated(_HUMAN, norm):
        return IntentResult("human", 0.95, "builtin")
    if _START_OVER.search(norm) and not _negated_start(norm):
        return IntentResult("start_over", 0.9, "builtin")
    if _REPEAT.search(norm):
        return IntentResult("repeat", 0.9, "builtin")
    if _GOODBYE.search(norm) and not re.search(r"\b(?:don't|do not|not) hang up\b", norm):
        return IntentResult("goodbye", 0.9, "builtin")
    if norm == "know":  # ASR writes a lone "no" as "know" often enough; nobody answers just "know"
        return IntentResult("no", 0.6, "builtin")
    best = _best_short_intent(norm)
    if not best.name and _NO_THEN_NEGATION.match(norm):
        return IntentResult("no", 0.7, "builtin")  # "no, I don't want to ...", "no, that's not it"
    return best


def _negated_start(norm: str) -> bool:
    return bool(re.search(r"\b(?:don't|do not|not) (?:want to )?(?:start|begin|go back)\b", norm))


def _best_short_intent(norm: str) -> IntentResult:
    best = NO_INTENT
    for name, phrases in _SHORT_INTENTS:
        if not phrases.search(norm):
            continue
        confidence = _short_confidence(name, phrases, norm)
        if confidence > best.confidence:
            best = IntentResult(name, confidence, "builtin")
    return best


def _short_confidence(name: str, phrases: re.Pattern[str], norm: str) -> float:
    """How surely `norm` is just this intent: by the words left once its phrases are taken out."""
    rest = phrases.sub(" ", norm)
    if name != "thanks":
        rest = _SOFT_RE.sub(" ", rest)
    else:
        rest = _SOFT_RE.sub(" ", _phrase_set(_YES_WEAK).sub(" ", rest))
    leftover = len(rest.split())
    if leftover > _MAX_LEFTOVER_WORDS:
        return 0.0
    confidence = (0.95, 0.8)[leftover]
    if name == "yes" and not _YES_STRONG_RE.search(norm):
        confidence -= 0.15  # "okay" alone is as often an acknowledgement as an answer
    if name == "no" and re.search(r"\bi (?:don't|do not) know\b|\bnot sure\b", norm):
        return 0.0
    return confidence
