"""The webhooks worker's exceptions, under `ferry.errors.FerryError`.

    FerryError
     +-- WebhookError          a delivery could not be attempted as asked
          +-- SecretError      an endpoint's signing secret is malformed
          +-- TargetError      the target URL cannot be used
               +-- RefusedTargetError   it resolves to an internal address
               +-- ResolveError    its host name does not resolve

None of their messages carries a secret; target messages name the host and
the address that was refused, never the URL's path or query, which often
hold a receiver's own token.
"""

from __future__ import annotations

from ferry.errors import FerryError


class WebhookError(FerryError):
    """A delivery could not be attempted; the attempt records the kind."""

    kind = "error"


class SecretError(WebhookError):
    """A `whsec_` secret is malformed; the message says how, not what it is."""

    kind = "bad_secret"


class TargetError(WebhookError):
    """The endpoint URL cannot be used (scheme, credentials, no host)."""

    kind = "bad_url"


class RefusedTargetError(TargetError):
    """The host resolves to an address outside what webhooks may reach."""

    kind = "refused_target"


class ResolveError(TargetError):
    """The host name has no address."""

    kind = "dns"
