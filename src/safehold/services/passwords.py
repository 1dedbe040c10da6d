"""Password generation with a policy (pure, randomness injectable)."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass

from safehold.errors import InvalidInput

AMBIGUOUS = set("Il1O0o")
SYMBOLS = "!#$%&()*+,-./:;<=>?@[]^_{|}~"


@dataclass(frozen=True)
class PasswordPolicy:
    length: int = 20
    lowercase: bool = True
    uppercase: bool = True
    digits: bool = True
    symbols: bool = True
    exclude_ambiguous: bool = False

    def classes(self) -> list[str]:
        chosen = [
            string.ascii_lowercase if self.lowercase else "",
            string.ascii_uppercase if self.uppercase else "",
            string.digits if self.digits else "",
            SYMBOLS if self.symbols else "",
        ]
        if self.exclude_ambiguous:
            chosen = ["".join(c for c in cls if c not in AMBIGUOUS) for cls in chosen]
        return [c for c in chosen if c]

    def validate(self) -> None:
        if not 8 <= self.length <= 256:
            raise InvalidInput("length must be between 8 and 256", field="length")
        if not self.classes():
            raise InvalidInput("choose at least one character class", field="lowercase")
        if self.length < len(self.classes()):
            raise InvalidInput("length is shorter than the number of classes", field="length")


def generate(policy: PasswordPolicy, rng: secrets.SystemRandom | None = None) -> str:
    """At least one character of every chosen class, the rest from all of them, shuffled."""
    policy.validate()
    rng = rng or secrets.SystemRandom()
    classes = policy.classes()
    alphabet = "".join(classes)
    chars = [rng.choice(c) for c in classes]
    chars += [rng.choice(alphabet) for _ in range(policy.length - len(chars))]
    rng.shuffle(chars)
    return "".join(chars)


def satisfies(password: str, policy: PasswordPolicy) -> bool:
    return len(password) == policy.length and all(any(ch in c for ch in password) for c in policy.classes())
