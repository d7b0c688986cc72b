"""Model delivery on the device: signed manifests, the blob cache, A/B slots, the on-device gate."""
