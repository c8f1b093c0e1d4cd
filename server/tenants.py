"""Tenants: what a key with an adapter allowlist may name, and what it is shown.

A key of the keys file may carry ``adapters`` (fnmatch globs over adapter names), ``routes``
(route groups) and per-minute budgets (:mod:`adapterhub_server.settings`, ``KeyEntry``); route
groups and budgets are enforced in :mod:`~adapterhub_server.deps` and
:mod:`~adapterhub_server.auth`. This module holds the allowlist rules the routes share.

Rules:

* **Names, not refs.** A ref's name is matched (``pirate``, ``pirate@2`` and ``pirate:prod`` are
  all ``pirate``). The base is always allowed: every key that may call the inference routes may
  generate with the base. A mix is allowed when each of its refs is.
* **Outside the list is unknown.** A ref whose name is not on the list is refused with
  :func:`adapterhub.registry.store.unknown_adapter`, the very error the registry raises for a
  name no version has. And for such a key, *every* ``AdapterNotFoundError`` a route raises is
  answered as that one (by the error handler,
  :func:`adapterhub_server.errors.library_error_response`): no close matches, no list of existing versions, so a key
  cannot tell an adapter it may not use from one that does not exist, on any route.
* **Listings are filtered:** ``/v1/models``, ``/admin/versions``, ``/admin/adapters`` and
  lineage chains leave out what the key may not use.
* **Jobs.** A train job's ``parent`` and an eval or push job's ``ref`` outside the list are the
  same 404. A train job's recipe ``name`` or a pull job's ``name`` outside the list is a 403
  (:func:`check_new_name`): the job would *create* that name, and the refusal depends on the
  key's own list only, never on what exists. A restricted key's pull job must give ``name`` (a
  pull's name can otherwise come from the downloaded files, too late to check). The recipe's
  ``name`` and ``parent`` are checked from the recipe alone, before it is planned, so whether a
  hidden parent exists cannot change the answer. Such a key sees only the jobs it queued
  (:mod:`adapterhub_server.routes.jobs`).

Not filtered: an allowed version's ``parent`` field (it may name an adapter outside the list),
the count ``slots_used`` of ``/admin/adapters``, ``/admin/replicas`` and the ``/metrics`` labels
(a key with those route groups is trusted with them).
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import HTTPException

from adapterhub.core.refs import AdapterRef
from adapterhub.registry.store import unknown_adapter
from adapterhub_server.auth import Caller
from adapterhub_server.schemas import ChatCompletionRequest, CompletionRequest


def check_ref(caller: Caller, ref: str) -> None:
    """Refuse an adapter ref outside ``caller``'s list as unknown.

    Raises:
        ConfigError: ``ref`` is not a ref (the same for every key).
        AdapterNotFoundError: its name is not on the list.
    """
    if not caller.is_restricted:
        return
    parsed = AdapterRef.parse(ref)
    if not caller.may_use(parsed.name):
        raise unknown_adapter(str(parsed))


def check_generation(caller: Caller, body: ChatCompletionRequest | CompletionRequest, base: str) -> None:
    """Refuse a chat or text completion naming an adapter (or a mix part) outside the list."""
    if body.mix is not None:
        for part in body.mix:
            check_ref(caller, part.ref)
        return
    ref = body.adapter_id or body.model
    if ref != base:
        check_ref(caller, ref)


def check_new_name(caller: Caller, name: str | None, field: str) -> None:
    """Refuse a job that would register ``name`` outside the list (403, see the module docstring).

    Raises:
        HTTPException: 403 naming the field; a pull without a name for a restricted key is one too.
    """
    if not caller.is_restricted:
        return
    if name is None:
        raise HTTPException(403, f"key {caller.name!r} may use only some adapters; give {field} so the "
                                 "adapter this job registers can be checked against them")
    if not caller.may_use(name):
        raise HTTPException(403, f"{field}={name!r} is not among the adapters key {caller.name!r} may use; "
                                 "choose a name its list allows")


def visible(caller: Caller, names: Iterable[str]) -> set[str]:
    """The adapter names of ``names`` that ``caller`` may see."""
    return {name for name in names if caller.may_use(name)}

