"""Fixtures of the operator tests: an API client for the emulator, with kopf pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.k8s.emulator import KubeqEmulator, api_for, kubeconfig_for

from kubeq_operator.kube.backend import KubeApi


@pytest.fixture
async def api(kmock: KubeqEmulator, tmp_path: Path) -> AsyncIterator[KubeApi]:
    with kubeconfig_for(str(kmock.url), tmp_path):
        client = api_for(str(kmock.url))
        yield client
        await client.close()
