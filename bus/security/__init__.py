"""Security building blocks for the management API and the ingress.

- ``clients``: the ``security:`` settings model, secret hashing, the client registry
- ``tokens``: access tokens (JWT, RFC 9068) issue and validation (RFC 8725)
- ``oauth``: ``POST /oauth/token``, client credentials grant (RFC 6749 §4.4)
- ``guard``: bearer tokens and scopes on routes (RFC 6750); ``request.state.principal``
- ``fields``: field-level projection of response bodies
- ``ratelimit``: token bucket per (client or IP, route)
- ``netguard``: outbound requests only to public addresses, checked at connect time
- ``aiohttp_transport``: the httpx transport the outbound client sends through (aiohttp I/O)
- ``xmlsafe``: XML without DTDs, entities or external references
- ``tls``: server SSL context (TLS 1.3 minimum by default) and uvicorn wiring
"""
