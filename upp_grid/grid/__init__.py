"""Grid submission: sandbox, job specs, state, backends and transfers."""
