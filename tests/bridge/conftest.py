"""The bridge tests' fixture: a real nats-server with JetStream on loopback."""
from support.natsserver import nats_server  # noqa: F401 - the fixture
