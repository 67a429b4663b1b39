# custos-controlplane: the token the Custos control plane uses for envelope keys.
#
# Scope: the Transit mount "transit", keys named "custos-*" only. Nothing on other
# mounts, nothing under sys/ but reading ACL policies, no export, no backup, no key listing.
#
# Vault matches "custos-*" as a prefix, so each rule below also covers the key's
# sub-paths (keys/custos-x/trim, /import, ...). allowed_parameters is what keeps those
# closed: a request carrying any parameter not listed is denied.

# Create a KEK (aes256-gcm96 only; not derived, not exportable, no imported material),
# read its state, rotate it (keys/custos-x/rotate takes no parameters), change the
# version floors for suspend/resume, allow deletion, delete it (crypto-shredding).
# Denied by the parameter list: trim (min_available_version), import (ciphertext),
# exportable / allow_plaintext_backup / auto_rotate_period, other key types.
path "transit/keys/custos-*" {
  capabilities = ["create", "read", "update", "delete"]
  allowed_parameters = {
    "type"                   = ["aes256-gcm96"]
    "min_decryption_version" = []
    "min_encryption_version" = []
    "deletion_allowed"       = []
  }
}

# New data key for an artifact, returned in plaintext to be handed to the pushing
# client, bound to the artifact by associated_data. No nonce, no context (derivation).
path "transit/datakey/plaintext/custos-*" {
  capabilities = ["update"]
  allowed_parameters = {
    "associated_data" = []
  }
}

# Unwrap a data key for an authorized host.
path "transit/decrypt/custos-*" {
  capabilities = ["update"]
  allowed_parameters = {
    "ciphertext"      = []
    "associated_data" = []
  }
}

# Rewrap after rotation. Transit's rewrap endpoint ignores associated_data, so the
# provider decrypts and encrypts again (under the latest version) instead; the
# rewrap endpoint is therefore not granted. "update" only: without "create", encrypt
# cannot auto-create a key.
path "transit/encrypt/custos-*" {
  capabilities = ["update"]
  allowed_parameters = {
    "plaintext"       = []
    "associated_data" = []
  }
}

# Keep this token alive: read its TTL and renew it before it expires (the control plane
# does both; a token made without the "default" policy can do neither otherwise).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}

# Sign audit checkpoints with the ed25519 key "audit-checkpoints" (docs/audit.md), and read
# its public half. The key is created by an operator, outside the "custos-" names that
# model keys use, so no model name can reach it and the control plane can neither rotate,
# reconfigure nor delete it. Only the input and the pinned key version may be given: no
# prehashing, no other algorithm, no batch.
path "transit/keys/audit-checkpoints" {
  capabilities = ["read"]
}
path "transit/sign/audit-checkpoints" {
  capabilities = ["update"]
  allowed_parameters = {
    "input"       = []
    "key_version" = []
  }
}

# Sign completion reports with the ed25519 key "order-reports" (docs/orders.md, "Signed
# evidence"), and read its public half. Outside the "custos-" names, like the checkpoint key.
# The control plane creates it if it is absent, as type ed25519 only (Transit's key path has
# no existence check, so creating takes "update"; on an existing key that write changes
# nothing, and every other parameter is denied). The exact path covers none of its
# sub-paths: the control plane can never rotate, reconfigure, trim, export or delete it.
# Only the input and the key version may be given to sign: no prehashing, no batch.
path "transit/keys/order-reports" {
  capabilities = ["create", "update", "read"]
  allowed_parameters = {
    "type" = ["ed25519"]
  }
}
path "transit/sign/order-reports" {
  capabilities = ["update"]
  allowed_parameters = {
    "input"       = []
    "key_version" = []
  }
}

# Read the ACL policies, to say which ones reach a model's Transit key (custos access who).
path "sys/policies/acl" {
  capabilities = ["list"]
}
path "sys/policies/acl/*" {
  capabilities = ["read"]
}
