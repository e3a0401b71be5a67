"""Token validation and claim-to-role mapping as the IceProd REST server does them."""

import re
from collections.abc import Iterable, Mapping
from typing import Any

import jwt

# iceprod/roles_groups.py: each expression is "dotted.claim=regex", matched with re.fullmatch.
ROLES: dict[str, tuple[str, ...]] = {
    "admin": ("groups=/tokens/IceProdAdmins",),
    "user": ("groups=/institutions/IceCube.*",),
    "system": ("resource_access.iceprod.roles=iceprod-system",),
}
GROUPS: dict[str, tuple[str, ...]] = {
    "admin": ("groups=/tokens/IceProdAdmins",),
    "simprod": ("groups=/posix/simprod-submit",),
    "filtering": ("groups=/posix/i3filter",),
    "users": ("groups=/institutions/IceCube.*",),
}
BYPASS_ROLES = frozenset({"admin", "system"})
SYSTEM_USER = "iceprod-system"
# what a Keycloak client needs in its tokens to act as IceProd's system role
SYSTEM_ROLE_CLAIMS: dict[str, Any] = {"resource_access": {"iceprod": {"roles": [SYSTEM_USER]}}}
SYSTEM_CLAIMS: dict[str, Any] = {"sub": SYSTEM_USER, **SYSTEM_ROLE_CLAIMS}


def _matches(claims: Mapping[str, Any], expression: str) -> bool:
    """Evaluate one role expression like rest_tools' token_attribute_role_mapping_auth."""
    name, pattern = expression.split("=", 1)
    *prefix, last = name.split(".")
    node: Any = claims
    for part in prefix:
        node = node.get(part, {})
    value = node.get(last)
    if value is None:
        return False
    values = value if isinstance(value, list) else [value]
    return any(re.fullmatch(pattern, v) for v in values)


def roles_of(claims: Mapping[str, Any], wanted: Iterable[str]) -> list[str]:
    """The roles among `wanted` that the claims grant, sorted (raises on malformed claims)."""
    return sorted(r for r in set(wanted) if any(_matches(claims, e) for e in ROLES[r]))


def groups_of(claims: Mapping[str, Any]) -> list[str]:
    """The IceProd groups the claims grant, sorted (raises on malformed claims)."""
    return sorted(g for g, exprs in GROUPS.items() if any(_matches(claims, e) for e in exprs))


def username_of(claims: Mapping[str, Any]) -> Any:
    """The username the server sees: iceprod-system for system tokens, else preferred_username.

    Like IceProd's APIBase.get_current_user, the claim is taken as it is (any JSON value): the
    handlers only test it for truth, so a missing or empty one means "not authenticated".
    """
    roles = claims.get("resource_access", {}).get("iceprod", {}).get("roles", [])
    if SYSTEM_USER in roles:
        return SYSTEM_USER
    return claims.get("preferred_username")


class TokenValidator:
    """Validate bearer tokens like rest_tools OpenIDAuth: RS256/RS512, exp/iat/iss required."""

    def __init__(self, jwks: Mapping[str, Any], audience: str | None, leeway: float = 60.0):
        """Take the issuer's JWKS document; `audience` None skips the aud check."""
        self._keys = {k.key_id: k.key for k in jwt.PyJWKSet.from_dict(dict(jwks)).keys}
        self._audience = audience
        self._leeway = leeway

    def validate(self, token: str) -> dict[str, Any]:
        """Return the token's claims or raise (unknown kid, bad signature, expired...)."""
        key = self._keys[jwt.get_unverified_header(token)["kid"]]
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["RS256", "RS512"],
            audience=self._audience,
            leeway=self._leeway,
            options={"require": ["exp", "iat", "iss"], "verify_aud": bool(self._audience)},
        )
        return claims
