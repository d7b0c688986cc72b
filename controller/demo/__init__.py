"""`slmops demo`: the whole system on one machine, as real processes on loopback."""
