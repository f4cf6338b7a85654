from tests.client.conftest import dead_endpoint, fake_cluster

__all__ = ["dead_endpoint", "fake_cluster"]
