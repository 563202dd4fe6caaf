"""The one command language of the challenge bots (WeCom robot, official-account chat, chat tool): pure text → value.

Chinese first, English aliases welcome. Forgiving: NFKC first (full-width letters, digits and spaces become
plain ones), @-mentions at the start dropped (a WeCom group message arrives as ``@机器人 排行榜``), spacing and
punctuation ignored, small Chinese numerals read (``三天``, ``两块``, ``十五元``). :func:`parse` never raises:
it answers a :class:`Command` or a :class:`Mistake` saying what was wrong, with an example to copy.

    发起步数挑战 3天 每人5元  /  步数挑战 3 天 输的人 5 块  /  start steps 3 days 5 yuan   → StartChallenge
    加入 12  /  参加  /  join 12                                                         → JoinChallenge
    排行榜 12  /  排行  /  rank                                                           → ShowStandings
    我的挑战  /  mine                                                                    → ListMine
    绑定  /  bind                                                                         → RequestBinding
    设置推送 <群机器人 webhook 地址或 key>  /  关闭推送  (in a WeCom group)                  → SetWebhook
    帮助  /  ?  /  help                                                                   → ShowHelp

:func:`canonical` writes a command back in the words :func:`parse` reads (used in replies' examples).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import parse_qs, urlsplit

MAX_TEXT_CHARS = 500  # a WeCom text is at most 2,048 bytes; a command is a line
MIN_DAYS, MAX_DAYS = 1, 30  # WeRun gives the last 31 days: a longer challenge could not be measured
MAX_STAKE_FEN = 200_00  # the parser's bound; the challenge's own rules (and the balance) decide the rest
MAX_ID = 2**31 - 1


class Kind(StrEnum):
    STEPS = "steps"
    READING = "reading"
    QUIZ = "quiz"


KIND_WORDS: dict[Kind, tuple[str, ...]] = {
    Kind.STEPS: ("步数", "走路", "运动", "steps", "step", "walk"),
    Kind.READING: ("阅读", "读书", "看书", "reading", "read"),
    Kind.QUIZ: ("答题", "知识", "问答", "竞赛", "quiz"),
}
KIND_NAMES = {Kind.STEPS: "步数", Kind.READING: "阅读", Kind.QUIZ: "答题"}


@dataclass(frozen=True)
class StartChallenge:
    kind: Kind
    days: int
    stake_fen: int  # from each loser (quiz: from each winner, the prize direction reversed)


@dataclass(frozen=True)
class JoinChallenge:
    challenge_id: int | None = None  # None: the group's open challenge


@dataclass(frozen=True)
class ShowStandings:
    challenge_id: int | None = None  # None: the group's latest challenge (in a 1:1 chat: the speaker's)


@dataclass(frozen=True)
class ListMine:
    pass


@dataclass(frozen=True)
class RequestBinding:
    pass


@dataclass(frozen=True)
class ShowHelp:
    pass


@dataclass(frozen=True)
class SetWebhook:
    """A group's leaderboard posts go to this WeCom group-robot webhook key (None: stop posting). The key is a
    credential: kept out of ``repr`` (logs), never echoed in a reply."""

    key: str | None = field(default=None, repr=False)


Command = StartChallenge | JoinChallenge | ShowStandings | ListMine | RequestBinding | ShowHelp | SetWebhook

EXAMPLE_START = "发起步数挑战 3天 每人5元"
EXAMPLES = (
    (EXAMPLE_START, "发起挑战（步数 / 阅读 / 答题），输的人每人出 5 元红包"),
    ("加入 12", "加入 12 号挑战（群里只有一个进行中的挑战时可以只说「加入」）"),
    ("排行榜 12", "看 12 号挑战的排行"),
    ("我的挑战", "我参加的挑战"),
    ("绑定", "私聊我，拿一次性绑定码，到小程序里确认"),
    ("设置推送 <群机器人 webhook 地址>", "在群里设置每日排行榜推送（关闭推送：停止）"),
    ("帮助", "看这张说明"),
)


@dataclass(frozen=True)
class Mistake:
    """Not a command we can run: ``code`` for tests and logs, ``message`` and ``example`` for the person."""

    code: str
    message: str
    example: str = EXAMPLE_START

    def reply_text(self) -> str:
        return f"{self.message}\n例如：{self.example}\n发送「帮助」查看全部命令。"


# -- normalizing ---------------------------------------------------------------------------------------

MENTION = re.compile(r"^\s*@\S*\s*|\s+@\S*\s*$")
# A point beside a digit (1.5, .5, 2.) and a separator between two digits (1,000) stay: an amount is read whole or
# refused, never in part. Other marks between two digits (0。5, 0·5, 0:5) become a separator, so they are refused too.
PUNCTUATION = re.compile(r"\.(?!\d)|(?<!\d)[,、]|[,、](?!\d)" r"|[;:!~，。；：！…“”\"'「」『』()（）\[\]【】<>《》]+")
BETWEEN_DIGITS = re.compile(r"(?<=\d)\s*[。｡·‧∙٫⁄・]\s*(?=\d)")  # (not a colon: 8:00 is a time)
ODD_DIGIT = "¿"  # a superscript, circled or fraction digit: NFKC would make 5² read 52
# (and a digit of another script, which NFKC leaves as it is: ۰ and ٠ are zeros drawn as a point, 1۰5 was read 105)
SPACES = re.compile(r"\s+")


def normalized(text: str) -> str:
    """NFKC, lower case, @-mentions at the start dropped, punctuation as spaces, one space between words; a digit
    that is neither ASCII nor made ASCII by NFKC (full-width) is ``ODD_DIGIT``: a number holding it is refused."""
    text = "".join(f" {ODD_DIGIT} " if unicodedata.category(c) == "No" else c for c in text[: MAX_TEXT_CHARS * 2])
    text = unicodedata.normalize("NFKC", text)
    text = "".join(f" {ODD_DIGIT} " if c.isdecimal() and not c.isascii() else c for c in text)
    text = BETWEEN_DIGITS.sub("、", text.lower())
    text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Zs", "Zl", "Zp") else c for c in text)
    while True:
        stripped = MENTION.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    text = PUNCTUATION.sub(" ", text)
    return SPACES.sub(" ", text).strip()


CN_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
CN_NUMBER = re.compile(r"[零〇一二两三四五六七八九十百]+")
# 零点三, 一点五, 3点5: 点 between a whole part and digits is a decimal point (8点 alone, or 8点半, is not)
CN_DECIMAL = re.compile(r"(\d+|[零〇一二两三四五六七八九十百]+)点(\d+|[零〇一二两三四五六七八九]+)")


def cn_number(word: str) -> int | None:
    """A small Chinese numeral (0-999): 三, 十五, 二十, 一百零五, 两百, 一百五 (150: a digit right after 百 is
    its tens, as people say it; 一百零五 is 105); None if it is not one (三五, 五十五十, 十百: units go down)."""
    total, digit, last_unit, zero = 0, None, None, False
    for char in word:
        if char in CN_DIGITS:
            if digit is not None and digit != 0 and CN_DIGITS[char] != 0:
                return None  # 三五: not a numeral
            digit = CN_DIGITS[char]
            zero = zero or digit == 0
        elif char in "十百":
            unit = 10 if char == "十" else 100
            if last_unit is not None and unit >= last_unit:
                return None  # 五十五十 (said twice), 十百: not one numeral, never a sum of two
            total += (1 if digit is None else digit) * unit
            digit, last_unit, zero = None, unit, False
        else:
            return None
    if digit and last_unit == 100 and not zero:
        return total + digit * 10  # 一百五: 150 (read as 105 it would stake or join the wrong amount)
    return total + (digit or 0)


def _arabic(text: str) -> str:
    """Chinese numerals rewritten as digits (``三天`` → ``3天``, ``零点三元`` → ``0.3元``), other characters left
    alone."""

    def decimal(match: re.Match) -> str:
        whole, fraction = match.groups()
        value = int(whole) if whole.isdecimal() else cn_number(whole)
        digits = fraction if fraction.isdecimal() else "".join(str(CN_DIGITS[c]) for c in fraction)
        return match.group() if value is None else f" {value}.{digits} "

    def swap(match: re.Match) -> str:
        value = cn_number(match.group())
        return match.group() if value is None else f" {value} "

    return SPACES.sub(" ", CN_NUMBER.sub(swap, CN_DECIMAL.sub(decimal, text))).strip()


# -- parsing ---------------------------------------------------------------------------------------------

HELP_WORDS = ("帮助", "help", "?", "？", "菜单", "怎么玩", "命令", "menu")
MINE_WORDS = ("我的挑战", "我的", "mine", "my challenges", "my")
STANDINGS_WORDS = ("排行榜", "排行", "排名", "榜单", "leaderboard", "standings", "rank", "board")
JOIN_WORDS = ("加入挑战", "参加挑战", "加入", "参加", "参与", "报名", "join")
BIND_WORDS = ("绑定", "bind")
WEBHOOK_WORDS = ("设置推送", "推送设置", "设置群推送", "设置webhook", "set webhook", "webhook")
WEBHOOK_OFF_WORDS = ("关闭推送", "取消推送", "停止推送", "webhook off")
WEBHOOK_HOST, WEBHOOK_PATH = "qyapi.weixin.qq.com", "/cgi-bin/webhook/send"
WEBHOOK_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{15,63}")
WEBHOOK_URL = re.compile(r"https?://\S+", re.IGNORECASE)
START_WORDS = ("发起", "开始", "创建", "来个", "来一个", "新建", "开", "start", "new", "create")

# A whole number as written (never the tail of a longer one: "0.001元" is 0.001, not 001), checked after.
NUMBER = r"(?<![\d.,，、万千亿点])(\d+(?:\.\d+)?)(?![\d.,，、])"
# 2块5毛, 5元5角, 1块5 (一块五): yuan and jiao, read as 2.5元 (never 块 then a count of days or people)
YUAN_JIAO = re.compile(r"(\d+)\s*(?:块|元)\s*(\d)\s*(?:毛|角)")
# jiao/fen after 块/元 are read only at the end, or before 钱 or the days: 5元 2组, 5元 8点 are not 5.20, 5.80
NOT_A_COUNT = r"(?![\d.])(?=\s*(?:钱\s*)?(?:$|\d+\s*(?:天|日|days?|d\b)))"
KUAI_TAIL = re.compile(r"(\d+)\s*(?:块|元)\s*(\d)" + NOT_A_COUNT)  # 1块5, 五元五: 1.50, 5.50
KUAI_TWO = re.compile(r"(\d+)\s*(?:块|元)\s*([0-9])([0-9])" + NOT_A_COUNT)  # 5块50, 两块零八 (2块08): 5.50, 2.08
KUAI_HALF = re.compile(r"(\d+)\s*(?:块|元)\s*半")  # 1块半: 1.50
KUAI_ZERO = re.compile(r"(块|元)零([一二两三四五六七八九])(?!\s*[毛角])")  # 块零八 → 块08 (块零五毛: 5 jiao)
# any number left after 块/元 but the days (5元 2组, 5元50分, 5元 8点开始): not guessed at
LEFT_AFTER_UNIT = re.compile(r"(?:块|元)\s*\d+(?![\d.])(?!\s*(?:天|日|days?|d\b))")
# an amount we will not guess at: digit groups (1,000 / 0,5), or 万/千/亿 (3万点5元): refused, never read in part
UNREADABLE_AMOUNT = re.compile(
    r"\d\s*[,，、]\s*\d"  # digit groups, or 0。5 and the like
    r"|[万千亿]\s*(?:点\s*)?\d*\s*(?:元|块|yuan|rmb|cny)|\d\s*[万千亿]"  # 3万, 十万点五元
    r"|(?<!\d)\.\d|\d\.(?!\d)"  # .5, 2. 5: a point with a digit on one side only
    r"|\d\s+\d+(?:\.\d+)?\s*(?:元|块|yuan|rmb|cny)"  # 0 5元: two numbers before one unit
    # a sign, an operator or a letter right before an amount (-5元, 负五元, 5-10元, 1/2元, 1e3元): not a stake to read
    # in part (5, 10, 2 or 3 yuan reserved), refused ("rmb5" stays: rmb is a unit)
    r"|(?:[-+−±/*×÷^=%负]\s*|(?<!rm)b|[ac-z])\d+(?:\.\d+)?\s*(?:元|块|yuan|rmb|cny)"
    r"|" + ODD_DIGIT
)
DAYS = re.compile(NUMBER + r"\s*(?:天|日|days|day|d)(?![a-z])")
STAKE = re.compile(r"(?:¥|￥|rmb)\s*" + NUMBER + r"|" + NUMBER + r"\s*(?:元|块钱|块|yuan|rmb|cny)(?![a-z])")
SIGNED_DAYS = re.compile(r"(?:[-+−±/*×÷^=%负]\s*|[a-z])\d+(?:\.\d+)?\s*(?:天|日|days|day|d)(?![a-z])")  # -3天, 1e3天
HALF_DAYS = re.compile(r"\d\s*(?:天|日)\s*半")  # 3天半: three and a half days, not three (as 5元半 is 5.50)
ID = re.compile(r"^(?:#|no\.?|第)?\s*(\d{1,10})\s*(?:号)?$")


def _rest(text: str, words: tuple[str, ...]) -> str | None:
    """The text after the first of ``words`` it starts with (a whole word for Latin ones), else None."""
    for word in words:
        if text.startswith(word):
            rest = text[len(word) :]
            if word.isascii() and word[-1].isalnum() and rest[:1].isalnum() and rest[:1].isascii():
                continue
            return rest.strip()
    return None


def _challenge_id(rest: str, what: str, example: str) -> int | None | Mistake:
    rest = re.sub(r"^(?:挑战|challenge)\s*", "", _arabic(rest))
    if not rest:
        return None
    match = ID.match(rest)
    if not match or not 0 < int(match.group(1)) <= MAX_ID:
        return Mistake("bad_id", f"「{rest[:20]}」不是挑战编号：{what}后面跟编号，或什么都不跟。", example)
    return int(match.group(1))


def _kind_of(text: str) -> Kind | None:
    for kind, words in KIND_WORDS.items():
        if any(word in text for word in words):
            return kind
    return None


def _fen(amount: str) -> int | None:
    """Yuan as written → fen; None when it is not a whole number of fen (0.001) or absurdly long."""
    yuan, _, cents = amount.partition(".")
    if len(yuan) > 7 or len(cents) > 2:
        return None
    return int(yuan) * 100 + int((cents + "00")[:2])


def _start(text: str, kind: Kind) -> StartChallenge | Mistake:
    example = f"发起{KIND_NAMES[kind]}挑战 3天 每人5元"
    text = _arabic(KUAI_ZERO.sub(lambda m: f"{m.group(1)}0{CN_DIGITS[m.group(2)]}", text))
    days = DAYS.findall(text)
    if not days:
        return Mistake("missing_days", "要说挑战几天（例如「3天」）。", example)
    if len(days) > 1:
        return Mistake("ambiguous_days", "天数说了不止一次，只说一次就好。", example)
    if (
        "." in days[0]
        or len(days[0]) > 3
        or not MIN_DAYS <= int(days[0]) <= MAX_DAYS
        or SIGNED_DAYS.search(text)
        or HALF_DAYS.search(text)
    ):
        return Mistake("bad_days", f"挑战天数是 {MIN_DAYS} 到 {MAX_DAYS} 的整数（微信运动只保留 31 天）。", example)
    if UNREADABLE_AMOUNT.search(text):
        why = "金额请写成数字，例如「每人2.5元」（不用逗号、万、千）。"
        return Mistake("bad_stake", why, example)
    text = YUAN_JIAO.sub(r"\1.\2元", text)
    text = KUAI_TAIL.sub(r"\1.\2元", KUAI_TWO.sub(r"\1.\2\3元", KUAI_HALF.sub(r"\1.5元", text)))
    if LEFT_AFTER_UNIT.search(text):  # 5元50分 and the like: not guessed at
        return Mistake("bad_stake", "金额请写成数字，例如「每人2.5元」。", example)
    stakes = [a or b for a, b in STAKE.findall(text)]
    if not stakes:
        return Mistake("missing_stake", "要说输的人每人出多少（例如「每人5元」）。", example)
    if len(stakes) > 1:
        return Mistake("ambiguous_stake", "金额说了不止一次，只说一次就好。", example)
    stake_fen = _fen(stakes[0])
    if stake_fen is None or not 0 < stake_fen <= MAX_STAKE_FEN:
        why = f"每人金额在 0.01 元到 {MAX_STAKE_FEN // 100} 元之间，最多两位小数。"
        return Mistake("bad_stake", why, example)
    return StartChallenge(kind, int(days[0]), stake_fen)


def parse(text: object) -> Command | Mistake:
    """One message → a command, or a mistake to answer (never raises)."""
    if not isinstance(text, str):
        return Mistake("not_text", "我只看得懂文字消息。")
    if len(text) > MAX_TEXT_CHARS:
        return Mistake("too_long", f"消息太长了（最多 {MAX_TEXT_CHARS} 个字），一条消息一个命令。")
    line = normalized(text)
    if not line:
        return ShowHelp()
    if line in HELP_WORDS or _rest(line, HELP_WORDS) == "":
        return ShowHelp()
    if _rest(line, MINE_WORDS) == "" or line in ("我的挑战列表", "list"):
        return ListMine()
    if _rest(line, BIND_WORDS) is not None:
        return RequestBinding()
    if _rest(line, WEBHOOK_OFF_WORDS) == "":
        return SetWebhook(None)
    if _rest(line, WEBHOOK_WORDS) is not None:
        return webhook_key(text)
    rest = _rest(line, STANDINGS_WORDS)
    if rest is not None:
        found = _challenge_id(rest, "排行榜", "排行榜 12")
        return found if isinstance(found, Mistake) else ShowStandings(found)
    rest = _rest(line, JOIN_WORDS)
    if rest is not None:
        found = _challenge_id(rest, "加入", "加入 12")
        return found if isinstance(found, Mistake) else JoinChallenge(found)
    kind = _kind_of(line)
    if kind is not None and (_rest(line, START_WORDS) is not None or "挑战" in line or "challenge" in line):
        return _start(line, kind)
    if _rest(line, START_WORDS) is not None or "挑战" in line:
        return Mistake("missing_kind", "要说是哪种挑战：步数、阅读还是答题。")
    return Mistake("unknown_command", f"没看懂「{line[:20]}」。")


def meant_as_command(text: str, found: Command | Mistake) -> bool:
    """Whether ``text`` (read as ``found``), said where people write for other reasons too (the official account,
    one to one, no robot @-mentioned), is meant for the bot: a command read whole, or a mistaken one that speaks of a
    challenge or gives a number (``发起挑战``, ``加入 12号吧``, ``发起步数 3天``). A letter that only begins like
    one (``开发票怎么开``, ``加入会员有什么好处``, ``报名截止了吗``, ``绑定手机号怎么操作``) is not: it is left to
    people."""
    line = normalized(text)
    if isinstance(found, RequestBinding):
        return _rest(line, BIND_WORDS) == ""
    if not isinstance(found, Mistake):
        return True
    if found.code in ("unknown_command", "too_long", "not_text"):
        return False
    about_a_challenge = "挑战" in line or "challenge" in line
    if found.code == "missing_kind":  # a start word alone (开, 新建, 来个…) begins many a sentence
        return about_a_challenge
    return about_a_challenge or any(c.isdigit() for c in line)


def webhook_key(text: str) -> SetWebhook | Mistake:
    """The key of a WeCom group-robot webhook said as its URL (``https://qyapi.weixin.qq.com/cgi-bin/webhook/send?
    key=…``, from the raw text: normalizing would break it) or as the key alone. Nothing of the text is echoed."""
    example = "设置推送 https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…"
    raw = unicodedata.normalize("NFKC", text).strip()
    found = WEBHOOK_URL.search(raw)
    if found:
        url = urlsplit(found.group(0).rstrip("。，,.）)」"))
        keys = parse_qs(url.query).get("key", [])
        if (
            url.scheme != "https"
            or (url.hostname or "").lower() != WEBHOOK_HOST
            or url.port not in (None, 443)
            or url.username
            or url.path != WEBHOOK_PATH
            or len(keys) != 1
            or not WEBHOOK_KEY.fullmatch(keys[0])
        ):
            return Mistake(
                "bad_webhook", "这不是企业微信群机器人的 webhook 地址（https://qyapi.weixin.qq.com/…）。", example
            )
        return SetWebhook(keys[0])
    words = [w for w in re.split(r"\s+", raw) if WEBHOOK_KEY.fullmatch(w)]
    if len(words) != 1:
        return Mistake("bad_webhook", "要给出群机器人的 webhook 地址（或其中的 key）。", example)
    return SetWebhook(words[0])


def canonical(command: Command) -> str:
    """The command in the words :func:`parse` reads back to the same value."""
    match command:
        case StartChallenge(kind, days, stake_fen):
            return f"发起{KIND_NAMES[kind]}挑战 {days}天 每人{yuan_text(stake_fen)}元"
        case JoinChallenge(challenge_id):
            return "加入" if challenge_id is None else f"加入 {challenge_id}"
        case ShowStandings(challenge_id):
            return "排行榜" if challenge_id is None else f"排行榜 {challenge_id}"
        case ListMine():
            return "我的挑战"
        case RequestBinding():
            return "绑定"
        case ShowHelp():
            return "帮助"
        case SetWebhook(key):
            return "关闭推送" if key is None else f"设置推送 {key}"
    raise TypeError(f"not a command: {command!r}")


def yuan_text(fen: int) -> str:
    """5 → ``0.05``, 500 → ``5``, 550 → ``5.5``."""
    yuan, cents = divmod(fen, 100)
    return str(yuan) if not cents else f"{yuan}.{cents:02d}".rstrip("0")


def help_text() -> str:
    lines = ["挑战机器人的命令（在群里请先 @我）："]
    lines += [f"· {example} —— {what}" for example, what in EXAMPLES]
    lines.append("奖金只来自你在我们这里已有的返利余额或积分，不收新的钱。")
    return "\n".join(lines)
