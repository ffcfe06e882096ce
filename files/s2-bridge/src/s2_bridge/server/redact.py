"""Secret redaction, applied to every message and every files_involved entry before storage.

Each rule finds one kind of secret and replaces only the secret itself with `[REDACTED:<kind>]`,
keeping the text around it (`password=` stays; a URL keeps its scheme, user and host), so a
redacted message still reads. A key word on its own ("the secret sauce", "password policy") is
never touched: the assignment rules need a separator and a value after the key word.

Cost stays linear on 50,000-char adversarial input: every pattern starts at a literal or a
short bounded prefix, token runs carry a left boundary so one run is tried once (not at each of
its characters), and runs are possessive (`++`, Python 3.11+) so a failed match never backtracks.
Each rule also names the literals one of which any match must contain (`needles`): a rule whose
needles are all absent from the text is skipped, found by `in` on the case-folded text (memchr
speed), so ordinary text pays for a few scans, not thirty (docs/BENCHMARKS.md, "Redaction").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from s2_bridge.contract.tokens import PREFIXES

__all__ = ["RULES", "Rule", "fold", "redact_list", "redact_text"]

# Groups whose name starts with this hold the secret; the rest of the match is kept as it is.
_SECRET_GROUP_PREFIX = "secret"


@dataclass(frozen=True)
class Rule:
    """One kind of secret: a precompiled pattern and the kind named in the marker."""

    kind: str
    pattern: re.Pattern[str]
    # lower-case literals, one of which every match contains (in the text as `fold` gives it)
    needles: tuple[str, ...] = ()

    def wanted(self, lowered: str) -> bool:
        return not self.needles or any(needle in lowered for needle in self.needles)

    @property
    def marker(self) -> str:
        return f"[REDACTED:{self.kind}]"

    def apply(self, text: str) -> tuple[str, int]:
        return self.pattern.subn(self._replace, text)

    def _replace(self, match: re.Match[str]) -> str:
        for name in match.re.groupindex:
            if name.startswith(_SECRET_GROUP_PREFIX) and match.group(name) is not None:
                start, end = match.span(name)
                return match.string[match.start() : start] + self.marker + match.string[end : match.end()]
        return self.marker


@dataclass(frozen=True)
class ContextRule(Rule):
    """A shape that is a secret only with a context word in the `window` characters before it."""

    context: re.Pattern[str] = re.compile("$^")
    window: int = 100

    def apply(self, text: str) -> tuple[str, int]:
        parts: list[str] = []
        last = count = 0
        for match in self.pattern.finditer(text):
            if self.context.search(text, max(0, match.start() - self.window), match.start()) is None:
                continue
            parts += [text[last : match.start()], self.marker]
            last, count = match.end(), count + 1
        return ("".join(parts) + text[last:], count) if count else (text, 0)


def _rule(kind: str, pattern: str, flags: int = 0, *, needles: tuple[str, ...]) -> Rule:
    return Rule(kind, re.compile(pattern, flags), needles)


# A value that is a placeholder or a reference, not a secret: already redacted by an earlier
# rule, ${VAR}, {{ jinja }}, <your key>, ***, null-ish and type words (`password: str`,
# `secret: dict`, `token: Token`, `password: Optional[str]`), or an upper-case environment
# reference ($DB_PASSWORD).
_TYPE_WORDS = (
    r"str|string|bytes|secretstr|int|float|bool|dict|list|tuple|set|object|any|optional|union"
    r"|mapping|sequence|callable|type"
)
_NOT_A_VALUE = (
    r"(?!\[REDACTED:|\$\{|\{\{|<|\*{3}"
    r"|(?:null|none|nil|true|false|undefined|" + _TYPE_WORDS + r")(?![A-Za-z0-9_\-.])"
    r"|(?-i:(?:[A-Z][a-z]+){0,4}?(?:Token|Secret|Password|Key|Credentials?|Str|Type|Field))(?![A-Za-z0-9_\-.])"
    r"|\$(?-i:[A-Z_][A-Z0-9_]*)\b)"
)
# A bare value that names another variable holding the secret, as code passing a secret along
# does: an attribute path (`self.password`, `settings.db.secret`) or the key word itself
# (`password=password`). A plain word is a value: `DB_PASSWORD=secret`, `password=my_token`.
_NOT_A_REFERENCE = (
    r"(?!(?-i:(?:[A-Za-z_][A-Za-z0-9_]{0,40}\.){1,6}[A-Za-z_][A-Za-z0-9_]{0,40}"
    r"|password|passwd|pwd|token)(?![A-Za-z0-9_\-.]))"
)
# A bare value followed by `(` or `[` is code when it is a name without digits
# (`get_password()`, `os.environ["X"]`); `Tr0ub4dor(3)` is a password.
_NOT_CODE = r"(?!(?-i:[A-Za-z_.]++)[(\[])"
# An unquoted value ends at whitespace, quotes, `,`, `&`, `<>` or a backslash; `;`, brackets and
# braces belong to it when more of the value follows (`abc;def123`, `Tr0ub4dor(3)`), so a value
# that ends a call (`f(password=x)`) leaves the `)` alone. One character of lookahead: linear.
_STOP = r"""\s"'`,&<>\\"""
_SOFT = r";(){}\[\]"
_BARE_VALUE = rf"(?:[^{_STOP}{_SOFT}]++|[{_SOFT}](?=[^{_STOP}{_SOFT}]))++"
# A quoted value runs to its closing quote (escapes allowed) or, if the quote never closes,
# to the end of the line, so a cut-off value is still redacted.
_DOUBLE_QUOTED = r'"' + _NOT_A_VALUE + r'(?P<secret_dq>(?:[^"\\\n]|\\.)++)"?'
_SINGLE_QUOTED = r"'" + _NOT_A_VALUE + r"(?P<secret_sq>(?:[^'\\\n]|\\.)++)'?"


def _assignment(kind: str, names: str, *, needles: tuple[str, ...], numbers: bool = True) -> Rule:
    """`NAME=value`, `NAME: value`, `"NAME": "value"`, `NAME => 'value'`, case-insensitive.

    The name has no left boundary so prefixed names count (DB_PASSWORD, client_secret,
    OPENAI_API_KEY); it must be followed directly by the separator, so `password_reset` or
    `secrets:` are not names. With numbers=False a short bare number is a setting, not a
    secret (`max_token=4096`).
    """
    number = "" if numbers else r"(?![0-9]{1,9}(?![^" + _STOP + "]))"
    pattern = (
        rf"(?:{names})[\"']?[ \t]*(?::=|=>|==|[:=])[ \t]*"
        rf"(?:{_DOUBLE_QUOTED}|{_SINGLE_QUOTED}"
        rf"|{_NOT_A_VALUE}{_NOT_A_REFERENCE}{_NOT_CODE}{number}(?P<secret_bare>{_BARE_VALUE}))"
    )
    return _rule(kind, pattern, re.IGNORECASE, needles=needles)


# A command-line value: a word, or a quoted string.
_ARG_VALUE = r"""(?:"(?P<secret_dq>[^"\n]{1,200})"|'(?P<secret_sq>[^'\n]{1,200})'|(?P<secret>[^\s"'`]++))"""


# Order matters: specific token shapes run first so the marker names the real kind; the
# generic rules after them (header, bearer, assignments) skip values already redacted.
RULES: tuple[Rule, ...] = (
    # PEM private key block (RSA, EC, DSA, OPENSSH, ENCRYPTED, PKCS#8, PGP), BEGIN to END over
    # many lines. The body stops at the next BEGIN so a run of unterminated BEGINs stays linear;
    # an unterminated block takes the base64 lines that follow it (a pasted, cut-off key).
    _rule(
        "private_key",
        r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
        r"(?:(?:[^-]|-(?!----(?:END|BEGIN)))*+-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
        r"|[A-Za-z0-9+/=\r\n]*+)",
        needles=("-----begin ",),
    ),
    # JSON Web Token: base64url header starting `eyJ` (`{"`), payload and signature.
    _rule(
        "jwt",
        r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]{8,}+\.[A-Za-z0-9_\-]{8,}+\.[A-Za-z0-9_\-]{8,}+",
        needles=("eyj",),
    ),
    # This project's bridge tokens (tokens.PREFIXES: admin, lead, coordinator, worker) + 43 base64url.
    _rule(
        "s2_token",
        rf"(?<![A-Za-z0-9_\-])(?:{'|'.join(PREFIXES.values())})[A-Za-z0-9_\-]{{43,}}+",
        needles=tuple(prefix.lower() for prefix in PREFIXES.values()),
    ),
    # Anthropic API and admin keys: sk-ant-api03-..., sk-ant-admin01-...
    _rule("anthropic_key", r"(?<![A-Za-z0-9])sk-ant-[a-z]{2,10}[0-9]{2}-[A-Za-z0-9_\-]{20,}+", needles=("sk-ant-",)),
    # OpenAI-style keys: sk-<48>, sk-proj-..., sk-svcacct-..., sk-admin-... A real key mixes in
    # capitals or digits early; requiring one keeps lower-case slugs (sk-learn-...) out.
    _rule(
        "openai_key",
        r"(?<![A-Za-z0-9])sk-(?=[a-z_\-]{0,64}[A-Z0-9])[A-Za-z0-9_\-]{20,}+",
        needles=("sk-",),
    ),
    # GitHub tokens: ghp_ (classic PAT), gho_ (OAuth), ghu_/ghs_ (app), ghr_ (refresh), and
    # fine-grained github_pat_...
    _rule(
        "github_token",
        r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{30,}+|github_pat_[A-Za-z0-9_]{22,}+)",
        needles=("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ),
    # AWS access key ids: AKIA (long-term) or ASIA (temporary) + 16 upper-case alphanumerics.
    _rule("aws_access_key_id", r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])", needles=("akia", "asia")),
    # Slack tokens: xoxa-, xoxb- (bot), xoxp- (user), xoxr- (refresh), xoxs- (session).
    _rule("slack_token", r"(?<![A-Za-z0-9])xox[abprs]-[A-Za-z0-9\-]{10,}+", needles=("xox",)),
    # Google API keys: AIza + 35 base64url characters.
    _rule("google_api_key", r"(?<![A-Za-z0-9_\-])AIza[A-Za-z0-9_\-]{35}", needles=("aiza",)),
    # Stripe secret and restricted keys (live or test mode); publishable pk_ keys are public.
    _rule("stripe_key", r"(?<![A-Za-z0-9])[rs]k_(?:live|test)_[A-Za-z0-9]{16,}+", needles=("k_live_", "k_test_")),
    # Hugging Face access tokens: hf_ + 30 or more alphanumerics (no underscores, unlike names).
    _rule("huggingface_token", r"(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{30,}+", needles=("hf_",)),
    # npm access tokens: npm_ + 36 alphanumerics.
    _rule("npm_token", r"(?<![A-Za-z0-9_])npm_[A-Za-z0-9]{36}", needles=("npm_",)),
    # Password in a URL's userinfo: scheme://user:PASSWORD@host (user may be empty). The
    # password runs to the last `@` before the host (it may hold `@`, `/`, `#`), at most 256
    # characters, so the backtracking to that `@` is bounded per URL.
    _rule(
        "url_password",
        r"(?<![a-z0-9+.\-])[a-z][a-z0-9+.\-]{0,30}://[^\s:/?#@]*+:"
        r"(?!\[REDACTED:)(?P<secret>[^\s@]{1,256}+(?:@[^\s@]{1,256}+){0,3})@(?=[A-Za-z0-9\[])",
        re.IGNORECASE,
        needles=("://",),
    ),
    # GitLab personal, project and group access tokens.
    _rule("gitlab_token", r"(?<![A-Za-z0-9_])glpat-[A-Za-z0-9_\-]{20,}+", needles=("glpat-",)),
    # Slack incoming webhooks and workflow triggers: the path is the credential.
    _rule(
        "slack_webhook",
        r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<secret>[A-Za-z0-9_/\-]{10,}+)",
        needles=("hooks.slack.com/",),
    ),
    # Google OAuth client secrets.
    _rule("google_client_secret", r"(?<![A-Za-z0-9_])GOCSPX-[A-Za-z0-9_\-]{20,}+", needles=("gocspx-",)),
    # SendGrid API keys: SG.<22>.<43>.
    _rule("sendgrid_key", r"(?<![A-Za-z0-9_])SG\.[A-Za-z0-9_\-]{16,32}\.[A-Za-z0-9_\-]{16,64}", needles=("sg.",)),
    # Azure storage / service bus connection strings and SAS signatures.
    _rule(
        "azure_key",
        r"(?:AccountKey|SharedAccessKey)=(?P<secret>[A-Za-z0-9+/]{16,}+=*)",
        re.IGNORECASE,
        needles=("accountkey=", "sharedaccesskey="),
    ),
    _rule("azure_sas", r"[?&]sig=(?P<secret>[A-Za-z0-9%+/]{16,}+=*)", needles=("sig=",)),
    # Docker's config.json: "auth": "<base64 user:password>".
    _rule("docker_auth", r'"auth"[ \t]*:[ \t]*"(?P<secret>[A-Za-z0-9+/]{8,}+=*)"', needles=('"auth"',)),
    # A bare 40-character AWS secret access key (mixed case and digits), only when "aws",
    # "secret" or a redacted AWS key id sits within the 100 characters before it.
    ContextRule(
        "aws_secret_key",
        re.compile(
            r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]{0,39}[0-9])(?=[A-Za-z0-9/+]{0,39}[A-Z])"
            r"(?=[A-Za-z0-9/+]{0,39}[a-z])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
        ),
        context=re.compile(r"aws|secret", re.IGNORECASE),
        needles=("aws", "secret"),  # its context words: without one, no match can count
    ),
    # HTTP Authorization (or Proxy-Authorization) header with a Bearer, token or Basic
    # credential of 8+ characters; shorter words are placeholders such as `Bearer TOKEN`.
    _rule(
        "auth_header",
        r"authorization[\"']?[ \t]*[:=][ \t]*[\"']?(?:bearer|token|basic)[ \t]+"
        r"(?!\[REDACTED:)(?P<secret>[A-Za-z0-9._~+/\-]{8,}+=*)",
        re.IGNORECASE,
        needles=("authorization",),
    ),
    # A bare `Bearer <token>` outside a header: the token is 20+ characters and has a capital or
    # a digit early on, which prose after "bearer" (`Bearer of bad news`) does not.
    _rule(
        "bearer_token",
        r"(?<![A-Za-z0-9])bearer[ \t]+(?!\[REDACTED:)(?![/.])"
        r"(?=(?-i:[a-z._~+/\-]{0,63}[A-Z0-9]))(?P<secret>[A-Za-z0-9._~+/\-]{20,}+=*)",
        re.IGNORECASE,
        needles=("bearer",),
    ),
    # Command lines: `--password x`, `--token x`, `curl -u user:pass`, `sshpass -p pass`.
    _rule(
        "password",
        r"(?<![A-Za-z0-9_\-])--(?:[a-z0-9]+-){0,3}(?:password|passwd|passphrase|token|secret|api-key)"
        r"[ \t]+(?!-)(?!\[REDACTED:)" + _ARG_VALUE,
        re.IGNORECASE,
        needles=("--",),
    ),
    # `-u user:pass` / `--user user:pass` (curl, wget, httpie); a uid:gid (`-u 1000:1000`) is not.
    _rule(
        "password",
        r"(?<![A-Za-z0-9_\-])(?:-u|--user)[ \t]*=?[ \t]*['\"]?[^\s:'\"]{1,100}+:"
        r"(?!\[REDACTED:)(?![0-9]++(?![^\s'\"]))(?P<secret>[^\s'\"]++)",
        needles=("-u",),  # also in --user
    ),
    _rule("password", r"\bsshpass\b[^\n]{0,100}?(?<!\S)-p[ \t]*(?!\[REDACTED:)" + _ARG_VALUE, needles=("sshpass",)),
    # aws_secret_access_key = <value> (also AWS_SECRET_ACCESS_KEY, secret_access_key).
    _assignment("aws_secret_key", r"secret[_\-]?access[_\-]?key", needles=("secret",)),
    # password=, passwd:, passphrase=, pwd= (pwd not inside a word: OLDPWD is a directory).
    _assignment("password", r"passw(?:or)?d|passphrase|(?<![A-Za-z])pwd", needles=("passw", "passphrase", "pwd")),
    # api_key:, apikey=, api-key (X-API-Key header), access_key=.
    _assignment("api_key", r"api[_\-]?key|access[_\-]?key", needles=("api", "access")),
    # secret=, client_secret:, secret_key=, private_key=.
    _assignment("secret", r"secret(?:[_\-]?key)?|private[_\-]?key", needles=("secret", "private")),
    # token=, access_token=, auth_token=, refresh_token=, id_token= ...
    _assignment("token", r"token", needles=("token",), numbers=False),
)


# Python's case-insensitive matching also pairs U+0131 (dotless i) with i, which casefold() keeps.
_FOLD_EXTRA = str.maketrans({"\u0131": "i"})


def fold(text: str) -> str:
    """What the needles are looked for in: every character a case-insensitive pattern would
    take for an ASCII letter folded to it (casefold: U+017F long s -> s, U+212A Kelvin -> k)."""
    return text.casefold().translate(_FOLD_EXTRA)


def redact_text(text: str) -> tuple[str, int]:
    """Return `text` with every secret replaced by `[REDACTED:<kind>]`, and how many were."""
    total = 0
    lowered = fold(text)
    for rule in RULES:
        if not rule.wanted(lowered):
            continue
        text, count = rule.apply(text)
        if count:
            total += count
            lowered = fold(text)  # a marker may hold a later rule's needle: look again
    return text, total


def redact_list(items: list[str]) -> tuple[list[str], int]:
    """Redact each entry on its own (files_involved), so the result is still a list of strings."""
    redacted: list[str] = []
    total = 0
    for item in items:
        text, count = redact_text(item)
        redacted.append(text)
        total += count
    return redacted, total
