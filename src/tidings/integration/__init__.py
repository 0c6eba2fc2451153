"""Integration events: the public, versioned contract between services.

* :mod:`tidings.integration.translator`: domain event -> integration event(s), per bus;
* :mod:`tidings.integration.policy`: which producer may publish what to which bus;
* :mod:`tidings.integration.signing`: HMAC-SHA256 signatures with key rotation;
* :mod:`tidings.integration.protection`: encrypted sensitive fields and crypto-shredding;
* :mod:`tidings.integration.schema`: JSON Schema and AsyncAPI export.
"""
