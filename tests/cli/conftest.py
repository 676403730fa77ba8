import pytest


@pytest.fixture(scope="session", autouse=True)
def _cluster(pg_cluster):
    """Every test here runs against the throwaway cluster."""
    return pg_cluster
