# custos-auditor: read-only. Key metadata (versions, floors, flags; never key
# material) and the list of enabled audit devices. No decrypt, no data keys, no
# export, no changes.

# State of each Custos key.
path "transit/keys/custos-*" {
  capabilities = ["read"]
}

# Names of every key in the mount, to find keys the registry does not know. It lists
# the whole mount, which is one reason to give Custos a mount of its own.
path "transit/keys" {
  capabilities = ["list"]
}

# Which audit devices are enabled. Listing them needs "sudo" on exactly this path; it
# grants nothing on sys/audit/<device>, so devices cannot be enabled or disabled.
path "sys/audit" {
  capabilities = ["read", "sudo"]
}

# Keep this token alive: read its TTL and renew it before it expires (the control plane
# does both; a token made without the "default" policy can do neither otherwise).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}

# The public half of the audit checkpoint key, to compare with the published one.
path "transit/keys/audit-checkpoints" {
  capabilities = ["read"]
}
