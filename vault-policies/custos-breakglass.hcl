# custos-breakglass: an operator who can see key state and suspend or resume keys
# directly in Transit, when the control plane cannot (it is down or compromised).
#
# It cannot decrypt, generate data keys, encrypt, export, back up, trim, delete or
# create keys. Every use is visible in the server's audit log; a resume done here
# bypasses the signed "lift" order, so it is for emergencies only.

# Read key state; suspend = rotate to a suspension version and raise the version
# floors; resume = lower them again. Only the two floors may be changed (not
# deletion_allowed, exportable, ...); "create" is not granted, so no new keys.
path "transit/keys/custos-*" {
  capabilities = ["read", "update"]
  allowed_parameters = {
    "min_decryption_version" = []
    "min_encryption_version" = []
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
