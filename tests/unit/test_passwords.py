"""Password generation: every policy is honoured, for every seed."""

from __future__ import annotations

import itertools
import random
import secrets
import string
from typing import cast

import pytest

from safehold.errors import InvalidInput
from safehold.services.passwords import AMBIGUOUS, SYMBOLS, PasswordPolicy, generate, satisfies


def seeded(seed: int) -> secrets.SystemRandom:
    """A reproducible stand-in for SystemRandom (generate only calls choice and shuffle)."""
    return cast(secrets.SystemRandom, random.Random(seed))


CLASS_FLAGS = ("lowercase", "uppercase", "digits", "symbols")
CLASS_CHARS = {
    "lowercase": string.ascii_lowercase,
    "uppercase": string.ascii_uppercase,
    "digits": string.digits,
    "symbols": SYMBOLS,
}


def policies() -> list[PasswordPolicy]:
    """Every non-empty class combination x ambiguity x a spread of lengths."""
    out = []
    for flags in itertools.product([True, False], repeat=4):
        if not any(flags):
            continue
        lower, upper, digits, symbols = flags
        for exclude in (False, True):
            for length in (8, 9, 12, 20, 64, 256):
                out.append(PasswordPolicy(length, lower, upper, digits, symbols, exclude_ambiguous=exclude))
    return out


ALL_POLICIES = policies()


def chosen(policy: PasswordPolicy) -> list[str]:
    return [name for name in CLASS_FLAGS if getattr(policy, name)]


def test_policy_table_is_complete() -> None:
    assert len(ALL_POLICIES) == 15 * 2 * 6


@pytest.mark.parametrize("seed", range(5))
def test_generate_honours_every_policy(seed: int) -> None:
    rng = seeded(seed)
    for policy in ALL_POLICIES:
        password = generate(policy, rng)
        assert len(password) == policy.length, policy
        allowed = set("".join(CLASS_CHARS[n] for n in chosen(policy)))
        if policy.exclude_ambiguous:
            allowed -= AMBIGUOUS
        assert set(password) <= allowed, (policy, password)
        for name in chosen(policy):
            assert set(password) & set(CLASS_CHARS[name]), (policy, name, password)
        assert satisfies(password, policy)


def test_minimum_length_with_every_class_still_has_each_class() -> None:
    """The tightest case, many seeds: 8 characters, 4 classes, ambiguous excluded."""
    policy = PasswordPolicy(length=8, exclude_ambiguous=True)
    for seed in range(2000):
        password = generate(policy, seeded(seed))
        assert satisfies(password, policy), password
        assert not set(password) & AMBIGUOUS, password


def test_exclude_ambiguous_never_emits_ambiguous_characters() -> None:
    policy = PasswordPolicy(length=256, exclude_ambiguous=True)
    seen: set[str] = set()
    for seed in range(50):
        seen |= set(generate(policy, seeded(seed)))
    assert not seen & AMBIGUOUS
    assert set("Il1O0o") == AMBIGUOUS
    # ... while the rest of the alphabet is still used.
    assert seen == set(string.ascii_letters + string.digits + SYMBOLS) - AMBIGUOUS


def test_without_exclusion_ambiguous_characters_can_appear() -> None:
    seen: set[str] = set()
    for seed in range(50):
        seen |= set(generate(PasswordPolicy(length=256), seeded(seed)))
    assert AMBIGUOUS <= seen


def test_single_class_policies_use_only_that_class() -> None:
    for name, chars in CLASS_CHARS.items():
        flags = {n: n == name for n in CLASS_FLAGS}
        password = generate(PasswordPolicy(length=40, **flags), seeded(1))
        assert set(password) <= set(chars), (name, password)


def test_same_seed_same_password_and_default_rng_varies() -> None:
    policy = PasswordPolicy()
    assert generate(policy, seeded(7)) == generate(policy, seeded(7))
    assert len({generate(policy) for _ in range(20)}) == 20
    assert len(generate(policy)) == 20


def test_required_characters_are_not_always_at_the_front() -> None:
    """The guaranteed one-per-class characters are shuffled in, not a fixed prefix."""
    policy = PasswordPolicy(length=12)
    firsts = {generate(policy, seeded(seed))[0] in string.ascii_lowercase for seed in range(200)}
    assert firsts == {True, False}


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        ("aB3!aB3!aB3!aB3!aB3!", True),
        ("aB3!aB3!aB3!aB3!aB3", False),  # too short
        ("abcdefghijklmnopqrs!", False),  # no upper, no digit
        ("AB3!AB3!AB3!AB3!AB3!", False),  # no lower
    ],
)
def test_satisfies(password: str, expected: bool) -> None:
    assert satisfies(password, PasswordPolicy()) is expected


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (PasswordPolicy(length=7), "length"),
        (PasswordPolicy(length=0), "length"),
        (PasswordPolicy(length=-1), "length"),
        (PasswordPolicy(length=257), "length"),
        (PasswordPolicy(length=10_000), "length"),
        (PasswordPolicy(lowercase=False, uppercase=False, digits=False, symbols=False), "lowercase"),
        (PasswordPolicy(lowercase=False, uppercase=False, digits=False, symbols=False,
                        exclude_ambiguous=True), "lowercase"),
    ],
)
def test_invalid_policy_raises_invalid_input_naming_the_field(policy: PasswordPolicy, field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        generate(policy)
    assert exc.value.field == field
    assert exc.value.code == "invalid_input"
    assert str(exc.value)


@pytest.mark.parametrize("length", [8, 256])
def test_length_bounds_are_inclusive(length: int) -> None:
    assert len(generate(PasswordPolicy(length=length))) == length
