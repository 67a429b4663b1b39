"""The console: a web UI for executives, auditors and the security team, and a client of the control plane.

``custos console`` serves HTTPS to browsers: the fleet, orders waiting for
signatures with their exact canonical bytes, a shutdown in progress, incidents on
their 72-hour clock, access requests and audit verification. Browsers log in with
passkeys and executives sign orders and signer-set rotations with them: the
passkey's assertion over the object's digest is the signature (custos.core.webauthn).
The console holds no signer key and touches neither the Store nor the key
service; it calls the control plane through custos.client with a certificate per
role. Specified in docs/console.md.

Modules: ``ceremonies`` (passkey registration and login, pure), ``users`` (users,
passkeys, enrollment tokens), ``sessions`` (sessions and challenges), ``views``
(what pages show, pure), ``rotations`` (prepared signer-set rotations),
``backend`` (the control-plane clients), ``app`` (the HTTP API without sockets),
``server`` (HTTPS), ``tls`` (certificates), ``run`` (assembling it all).
"""
