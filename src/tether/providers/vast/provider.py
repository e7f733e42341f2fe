"""Vast.ai as a :class:`~tether.providers.base.Provider`: the HTTP client (:mod:`.api`), the JSON translation
(:mod:`.translate`) and the query language (:mod:`.query`) behind the ABC. Thin on purpose: renting with
retries, waiting and verified destroy is generic (:mod:`tether.renting`)."""

from __future__ import annotations

from collections.abc import Mapping

from tether.errors import ProviderError
from tether.providers.base import Instance, Offer, OfferQuery, Provider
from tether.providers.vast import query as vq
from tether.providers.vast.api import VastClient
from tether.providers.vast.translate import instance_from_json, offers_from_json


def _instance_id(instance_id: str) -> int:
    try:
        return int(instance_id)
    except ValueError as exc:
        raise ProviderError(
            f"{instance_id!r} is not a Vast.ai instance id.", "Vast.ai instance ids are numbers; see `tether ls`."
        ) from exc


class VastProvider(Provider):
    """Rented Vast.ai instances through :class:`VastClient` (built from the environment when not given)."""

    name = "vast"

    def __init__(self, client: VastClient | None = None) -> None:
        self.client = client if client is not None else VastClient()
        self._warnings: list[str] = []

    @staticmethod
    def check_query(text: str, order: str) -> None:
        vq.check(text, order)

    def search(self, query: OfferQuery) -> list[Offer]:
        body = vq.body_for(query)
        offers, skipped = offers_from_json(self.client.search_offers(body))
        if skipped is not None:
            self._warnings.append(skipped)
        return offers

    def take_warnings(self) -> list[str]:
        out, self._warnings = self._warnings, []
        return out

    def explain_no_match(self, query: OfferQuery) -> str:
        parsed = vq.parse_query(query.text)
        wide = vq.render_body(parsed.without_user_terms(), query.order, query.type, query.disk_gb, None)
        return vq.explain_no_match(parsed, self.client.search_offers(wide))

    def create(
        self,
        offer_id: int,
        *,
        image: str,
        disk_gb: float,
        label: str | None = None,
        onstart: str | None = None,
        env: Mapping[str, str] | None = None,
        price: float | None = None,
    ) -> str:
        new_id = self.client.create_instance(
            offer_id, image=image, disk_gb=disk_gb, label=label, onstart=onstart, env=env, price=price
        )
        return str(new_id)

    def show(self, instance_id: str) -> Instance | None:
        raw = self.client.show_instance(_instance_id(instance_id))
        return None if raw is None else instance_from_json(raw)

    def list_instances(self, label_prefix: str | None = None) -> list[Instance]:
        found = [instance_from_json(i) for i in self.client.list_instances()]
        if label_prefix is None:
            return found
        return [i for i in found if i.label is not None and i.label.startswith(label_prefix)]

    def stop(self, instance_id: str) -> None:
        self.client.stop_instance(_instance_id(instance_id))

    def start(self, instance_id: str) -> None:
        self.client.start_instance(_instance_id(instance_id))

    def label(self, instance_id: str, label: str) -> None:
        """Give the instance a new label (Vast.ai only; not part of the provider boundary)."""
        self.client.label_instance(_instance_id(instance_id), label)

    def account_keys(self) -> list[str] | None:
        return self.client.ssh_keys()

    def attach_key(self, instance_id: str, public_key: str) -> None:
        self.client.attach_ssh_key(_instance_id(instance_id), public_key)

    def destroy(self, instance_id: str) -> None:
        self.client.destroy_instance(_instance_id(instance_id))

    def close(self) -> None:
        self.client.close()
