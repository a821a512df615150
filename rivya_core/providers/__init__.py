"""Real provider clients behind the Provider port, and what they need.

One module per provider API:

- `replicate`: a Replicate-style predictions API (create with a webhook URL and
  `webhook_events_filter`, get, cancel; webhooks signed with Standard Webhooks).
- `fal`: a fal-style queue API (submit with `fal_webhook`, status, result,
  cancel; webhooks signed with ED25519 over request id, user id, timestamp and
  the body's SHA-256).
- `http`: the shared HTTP plumbing (timeouts, bounded retries, errors mapped to
  ProviderError kinds).
- `config`: which client serves which catalogue provider, from
  `RIVYA_PROVIDERS` / `.streamlit/secrets.toml` / a TOML file; tokens,
  secrets and public keys are never printed.

Each client carries its webhook format as `.callbacks` (verify + parse), which
`LifecycleService.handle_callback` uses for that provider's deliveries.
"""
