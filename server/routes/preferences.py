"""Votes as preference data: ``POST /v1/preferences`` stores one vote, a best answer over others
(the TUI's compare) or one answer's thumb up or down; ``GET /v1/preferences`` downloads them as
the JSONL dataset a recipe reads: pairs (TRL's conversational prompt/chosen/rejected: DPO, ORPO,
SimPO) or, with ``kind=thumbs``, prompt/completion/label (KTO), with the versions and who voted.

The pairs live in the served hub's ``preferences/compare.jsonl`` (:mod:`adapterhub.training.votes`),
the file the TUI writes in-process, so a DPO training job on this server names that path. Any
key may vote; reading the votes (everyone's prompts and answers) and learning the file's path
take an admin key, as training on them does.
Refs are resolved when the vote is stored, so a pair records the version that answered
(``pirate:prod`` is kept as ``pirate@3``), and an unknown one is a 404 as on every route.
"""

from __future__ import annotations

from typing import Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response

from adapterhub.training.votes import Answer, PreferenceStore
from adapterhub_server.deps import AdminCaller, HubDep, InferenceCaller, ReadyService
from adapterhub_server.schemas import (
    ERROR_RESPONSES,
    PreferenceRequest,
    PreferenceResponse,
    ThumbRequest,
    ThumbResponse,
    VotedAnswer,
)
from adapterhub_server.tenants import check_ref

router = APIRouter(tags=["preferences"], responses=ERROR_RESPONSES)


def _store(request: Request, hub: HubDep) -> PreferenceStore:
    """The app's one store (its lock keeps concurrent votes whole)."""
    store: PreferenceStore | None = getattr(request.app.state, "preferences", None)
    if store is None:
        store = request.app.state.preferences = PreferenceStore.in_home(hub.home)
    return store


@router.post("/v1/preferences", status_code=201, response_model=PreferenceResponse | ThumbResponse,
             summary="Store a vote: a best answer over others (pairs), or one answer's thumb (KTO)")
async def vote(body: PreferenceRequest | ThumbRequest, request: Request, caller: InferenceCaller,
               service: ReadyService, hub: HubDep) -> PreferenceResponse | ThumbResponse:
    store = _store(request, hub)

    def answer(voted: VotedAnswer) -> Answer:
        if voted.model is None or voted.model == service.base_name:
            return Answer(None, voted.content)
        check_ref(caller, str(voted.model))  # outside the key's list: as unknown as anywhere
        return Answer(hub.resolve(str(voted.model)).ref, voted.content)

    def store_vote() -> PreferenceResponse | ThumbResponse:
        if isinstance(body, ThumbRequest):
            record = store.thumb(body.prompt, answer(body.completion), body.label, voter=caller.name)
            return ThumbResponse(ref=record["ref"], label=record["label"], total=store.thumbs_count() or 0,
                                 dataset=str(store.thumbs_path) if caller.is_admin else None)
        pairs = store.vote(body.prompt, answer(body.chosen), [answer(r) for r in body.rejected], voter=caller.name)
        return PreferenceResponse(stored=len(pairs), total=store.count() or 0, chosen_ref=pairs[0].chosen.ref,
                                  rejected_refs=[p.rejected.ref for p in pairs],
                                  dataset=str(store.path) if caller.is_admin else None)

    return await anyio.to_thread.run_sync(store_vote)


@router.get("/v1/preferences", summary="Every stored pair (or thumb), as a JSONL dataset (admin keys)", tags=["admin"],
            responses={200: {"content": {"application/jsonl": {}}}})
async def export(_: AdminCaller, request: Request, hub: HubDep, kind: Literal["pairs", "thumbs"] = "pairs") -> Response:
    """``kind=pairs``: TRL's prompt/chosen/rejected (DPO, ORPO, SimPO, a reward model);
    ``kind=thumbs``: prompt/completion/label (KTO)."""
    store = _store(request, hub)
    path = store.path if kind == "pairs" else store.thumbs_path

    def read() -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return b""

    return Response(await anyio.to_thread.run_sync(read), media_type="application/jsonl",
                    headers={"X-Preference-Dataset": str(path)})
